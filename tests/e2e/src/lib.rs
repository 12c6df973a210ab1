//! wasmkube's end-to-end suite against a real Kubernetes: the local cluster that
//! `tests/cluster/up.sh` builds from upstream's Go modules, or kind (`tests/e2e/kind.sh`).
//!
//! The suite installs wasmkube as a user does (`kubectl apply -k manifests/`, `kubectl annotate
//! node`, `kubectl apply -f examples/…`) and checks the outcome through the API and on the node
//! itself. It needs:
//! - `KUBECONFIG`: the cluster, with admin rights;
//! - `kubectl` on `PATH` (or `KUBECTL`);
//! - a shell on the node: this machine when the node is this host (the local cluster), or the
//!   command prefix in `WASMKUBE_E2E_NODE_EXEC` (kind: `docker exec -i <node>`);
//! - the images already loaded on the node (`up.sh` imports them, `kind load` for kind).
//!
//! Without a reachable cluster the suite prints `SKIP` and passes, unless
//! `WASMKUBE_REQUIRE_CLUSTER=1` (CI), where that is a failure.

pub mod cluster;
pub mod diagnostics;
pub mod events;
pub mod node;
pub mod runner;
pub mod scenarios;
pub mod wait;

pub use cluster::Cluster;
pub use runner::Runner;
