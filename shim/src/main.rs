//! `containerd-shim-wasmkube-v1`: containerd runtime type `io.containerd.wasmkube.v1`.
use containerd_shim_wasm::shim::Cli as _;
use wasmkube_shim::{broker, WasmkubeShim};

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    // The same binary is the compile broker and its workers (see `broker`).
    if let Some(code) = broker::run_role(&args) {
        std::process::exit(code);
    }
    // Before runwasi forks its zygote, while this process has one thread: every container
    // process is cloned from the zygote and inherits the broker's client socket.
    if broker::is_daemon(&args) {
        broker::start();
    }
    WasmkubeShim::run(None);
}
