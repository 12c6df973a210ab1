//go:build tools

// Package tools pins the crictl command built by ../build.sh, so that
// `go mod tidy` keeps every module it needs in go.mod/go.sum.
package tools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
