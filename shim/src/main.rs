//! `containerd-shim-wasmkube-v1`: containerd runtime type `io.containerd.wasmkube.v1`.
use containerd_shim_wasm::shim::Cli as _;
use wasmkube_shim::{broker, WasmkubeShim};

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    // The same binary is the compile broker and its workers (see `broker`).
    if let Some(code) = broker::run_role(&args) {
        std::process::exit(code);
    }
    if broker::is_daemon(&args) {
        // Before runwasi's zygote is forked, while this process has one thread: every container
        // process is cloned from the zygote and inherits the broker's client socket.
        broker::start();
        // The zygote now (`WasmkubeShim::run` would fork it next, and leaves it as it is), so
        // that the broker can be started on demand from a thread of this process.
        containerd_shimkit::zygote::Zygote::init();
        broker::serve_on_demand();
    }
    WasmkubeShim::run(None);
}
