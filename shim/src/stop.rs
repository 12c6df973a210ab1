//! Stop requests: SIGTERM/SIGINT to the container's init process.
//!
//! The guest runs as PID 1 of its PID namespace, where a signal with no handler is ignored, so
//! `ctr tasks kill` or a pod deletion would hang until SIGKILL. We handle both signals for the
//! life of the process and publish every request; runners turn it into epoch bumps, which trap
//! running wasm at the next loop back-edge or call, however busy the guest is.
//!
//! A store sets its epoch deadline when it is created, relative to the epoch at that moment, so
//! one bump that lands before a store exists (a signal during compilation or instantiation)
//! would be lost. After a stop request the epoch is therefore bumped again every
//! [`REPEAT`]: every store, whenever it was made, traps within one period.
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

static REQUESTED: AtomicI32 = AtomicI32::new(0);

/// How often the epoch is bumped once a stop was requested.
pub const REPEAT: Duration = Duration::from_millis(10);

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
    /// Installs SIGTERM/SIGINT handlers (must run inside the Tokio runtime). Every signal is
    /// received and published, not only the first.
    pub fn install() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                let signo = tokio::select! {
                    Some(()) = term.recv() => libc::SIGTERM,
                    Some(()) = int.recv() => libc::SIGINT,
                    else => return,
                };
                REQUESTED.store(signo, Ordering::SeqCst);
                tx.send_replace(Some(signo));
            }
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

    /// Once a stop is requested, bumps the engine epoch now and every [`REPEAT`] after,
    /// trapping running guests and any store created later.
    pub fn interrupt_on_stop(self, engine: wasmtime::Engine) {
        tokio::spawn(async move {
            self.wait().await;
            loop {
                engine.increment_epoch();
                tokio::time::sleep(REPEAT).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store made after the stop request (a signal during compilation or instantiation)
    /// still traps: the epoch keeps moving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_created_after_the_stop_still_traps() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config).expect("engine");
        let module =
            wasmtime::Module::new(&engine, r#"(module (func (export "spin") (loop (br 0))))"#)
                .expect("module");
        let (tx, rx) = watch::channel(None);
        StopSignal(rx).interrupt_on_stop(engine.clone());
        tx.send_replace(Some(libc::SIGTERM));
        // Let the first bump happen before the store exists.
        tokio::time::sleep(REPEAT * 3).await;
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(1);
        let instance = wasmtime::Instance::new_async(&mut store, &module, &[])
            .await
            .expect("instance");
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .expect("spin");
        let trapped = tokio::time::timeout(Duration::from_secs(5), spin.call_async(&mut store, ()))
            .await
            .expect("the loop must be interrupted, not run forever");
        assert!(trapped.is_err(), "the guest was interrupted");
    }
}
