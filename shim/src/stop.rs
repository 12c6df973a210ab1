//! Stop requests: SIGTERM/SIGINT to the container's init process.
//!
//! The guest runs as PID 1 of its PID namespace, where a signal with no handler is ignored, so
//! `ctr tasks kill` or a pod deletion would hang until SIGKILL. We handle both signals and
//! publish the request; runners turn it into an epoch bump, which traps running wasm at the
//! next loop back-edge or call, however busy the guest is.
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

static REQUESTED: AtomicI32 = AtomicI32::new(0);

/// The signal that asked us to stop, if any.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}

/// Receives stop requests.
#[derive(Clone)]
pub struct StopSignal(watch::Receiver<Option<i32>>);

impl StopSignal {
    /// Installs SIGTERM/SIGINT handlers (must run inside the Tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let signo = tokio::select! {
                _ = term.recv() => libc::SIGTERM,
                _ = int.recv() => libc::SIGINT,
            };
            REQUESTED.store(signo, Ordering::SeqCst);
            let _ = tx.send(Some(signo));
        });
        Ok(StopSignal(rx))
    }

    /// Resolves with the signal number once a stop is requested.
    pub async fn wait(mut self) -> i32 {
        loop {
            if let Some(signo) = *self.0.borrow_and_update() {
                return signo;
            }
            if self.0.changed().await.is_err() {
                // Sender gone without a signal: never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Bumps the engine epoch when a stop is requested, trapping running guests.
    pub fn interrupt_on_stop(self, engine: wasmtime::Engine) {
        tokio::spawn(async move {
            self.wait().await;
            engine.increment_epoch();
        });
    }
}
