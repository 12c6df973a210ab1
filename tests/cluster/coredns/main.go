// Command coredns is CoreDNS with the plugins the local cluster needs: cluster DNS for Service
// and pod names (kubernetes), bound to the pod bridge's gateway (bind), a readiness endpoint
// for up.sh (ready), a cache, and error logging. CoreDNS's documented way to build with a
// chosen set of plugins: its dnsserver with our directive list, the plugins imported.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
)

// In CoreDNS's plugin.cfg order: a query passes through them in this order.
var directives = []string{"bind", "ready", "errors", "loadbalance", "cache", "kubernetes"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
