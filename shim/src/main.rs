//! `containerd-shim-wasmkube-v1`: containerd runtime type `io.containerd.wasmkube.v1`.
use containerd_shim_wasm::shim::Cli as _;
use wasmkube_shim::{host, WasmkubeShim};

fn main() {
    // Before runwasi forks its zygote: every container process is cloned from it and inherits
    // these handles (see `host`), which is how a guest reaches the host's compiled-module cache.
    host::open_host_handles();
    WasmkubeShim::run(None);
}
