//! `idle`: the installer pod's long-running container. It holds no host access of its own and
//! exits 0 on SIGTERM or SIGINT (as PID 1 in its container it must handle them itself, or pod
//! deletion waits for the grace period and a SIGKILL).
use tokio::signal::unix::{signal, SignalKind};

/// Blocks until SIGTERM or SIGINT.
pub fn until_stopped() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
