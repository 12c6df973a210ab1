#!/usr/bin/env bash
# Validates every object wasmkube ships or renders:
#   - `wasmkube render` of each example WasmApp, the installer DaemonSets + RuntimeClass
#     (`wasmkube-operator installer`), manifests/ and crds/ with `kubernetes-validate --strict`
#     against Kubernetes 1.30 and 1.37;
#   - each example WasmApp against the CRD's openAPIV3Schema (JSON Schema), plus a known-bad
#     WasmApp that must be rejected (so a validator that accepts everything fails the check).
# Usage: scripts/validate-manifests.sh        (exit status non-zero on any failure)
#        scripts/validate-manifests.sh --venv (only make the Python venv; scripts/test.sh runs
#                                              this beside the Rust build)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
VENV=${WASMKUBE_VALIDATE_VENV:-/var/tmp/wasmkube-validate-venv}
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}

if [ ! -x "$VENV/bin/kubernetes-validate" ] || ! "$VENV/bin/python" -c 'import jsonschema, yaml' 2>/dev/null; then
    echo "== python venv $VENV (kubernetes-validate, jsonschema)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet kubernetes-validate jsonschema pyyaml
fi
if [ "${1:-}" = --venv ]; then
    exit 0
fi

echo "== wasmkube and wasmkube-operator (scripts/build.sh; a no-op when built)"
scripts/build.sh >/dev/null
BIN=$BIN_DIR

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

mapfile -t APPS < <(grep -rlE '^kind: *WasmApp' examples --include='*.yaml' | sort)
if [ "${#APPS[@]}" -eq 0 ]; then
    echo "no example WasmApps under examples/" >&2
    exit 1
fi

FILES=()
for app in "${APPS[@]}"; do
    out="$OUT/$(echo "$app" | tr '/' '_')"
    "$BIN/wasmkube" render -f "$app" > "$out"
    FILES+=("$out")
done
"$BIN/wasmkube-operator" installer > "$OUT/installer.yaml"
FILES+=("$OUT/installer.yaml" crds/wasmapp.yaml manifests/namespace.yaml manifests/rbac.yaml manifests/operator.yaml)

status=0
for v in $K8S_VERSIONS; do
    echo "== kubernetes-validate --strict -k $v (${#FILES[@]} files)"
    if ! "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${FILES[@]}"; then
        status=1
    fi
done

echo "== example WasmApps against the CRD openAPIV3Schema"
"$VENV/bin/python" - crds/wasmapp.yaml "${APPS[@]}" <<'PY' || status=1
import copy, sys, yaml, jsonschema

crd_path, apps = sys.argv[1], sys.argv[2:]
crd = next(d for d in yaml.safe_load_all(open(crd_path)) if d and d.get("kind") == "CustomResourceDefinition")
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
validator = jsonschema.Draft7Validator(schema)
failed = False
checked = 0
for path in apps:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "WasmApp":
            continue
        checked += 1
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            print(f"FAIL {path}: {'.'.join(map(str, e.path))}: {e.message}")
            failed = True
        if not errors:
            print(f"ok   {path} ({doc['metadata']['name']})")

# Self-check: the validator must reject these.
bad = {"apiVersion": "wasmkube.dev/v1alpha1", "kind": "WasmApp", "metadata": {"name": "bad"},
       "spec": {"image": "", "replicas": -1, "service": {"type": "Headless", "port": 70000}}}
errors = list(validator.iter_errors(bad))
if len(errors) < 4:
    print(f"FAIL self-check: a bad WasmApp gave only {len(errors)} errors: {[e.message for e in errors]}")
    failed = True
else:
    print(f"ok   self-check: a bad WasmApp is rejected ({len(errors)} errors)")
if checked == 0:
    print("FAIL no WasmApp documents checked")
    failed = True
sys.exit(1 if failed else 0)
PY

if [ "$status" -ne 0 ]; then
    echo "validate-manifests: FAILED" >&2
else
    echo "validate-manifests: ok"
fi
exit "$status"
