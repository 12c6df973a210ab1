//! The epoch ticker of the wasi:http server: what makes its request deadlines preemptive.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::ShimError;

/// How often the engine's epoch advances: running guests yield and check their deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Advances the engine's epoch every [`EPOCH_TICK`] on its own OS thread (so a busy async
/// runtime cannot hold deadlines back) while a request is in flight, until dropped. An idle
/// server's ticker sleeps on a condition variable instead: a node with hundreds of idle wasm
/// pods would otherwise spend its CPU on 100 wake-ups a second per pod (measured by
/// bench/cluster.sh: 400 idle pods kept 2 cores busy). Nothing needs the epoch while no store
/// exists: a store's deadline counts from the epoch at its creation.
pub struct EpochTicker(Arc<TickerState>);

struct TickerState {
    done: AtomicBool,
    /// Held while deciding to sleep and while waking, so no wake-up is lost in between.
    lock: std::sync::Mutex<()>,
    wake: std::sync::Condvar,
}

impl EpochTicker {
    /// Calls `tick` (advance the engine's epoch) every [`EPOCH_TICK`] while `idle` (no request
    /// in flight) is false.
    pub fn start(
        tick: impl Fn() + Send + 'static,
        idle: impl Fn() -> bool + Send + 'static,
    ) -> Result<Self, ShimError> {
        let state = Arc::new(TickerState {
            done: AtomicBool::new(false),
            lock: std::sync::Mutex::new(()),
            wake: std::sync::Condvar::new(),
        });
        let ticking = state.clone();
        std::thread::Builder::new()
            .name("wasmkube-epoch".into())
            .spawn(move || {
                while !ticking.done.load(Ordering::Relaxed) {
                    {
                        let mut held = ticking.lock.lock().unwrap_or_else(|e| e.into_inner());
                        while idle() && !ticking.done.load(Ordering::Relaxed) {
                            held = ticking.wake.wait(held).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    std::thread::sleep(EPOCH_TICK);
                    tick();
                }
            })
            .map_err(ShimError::setup)?;
        Ok(EpochTicker(state))
    }

    /// Wakes the ticker: call after a request became in flight.
    pub fn busy(&self) {
        let _held = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.0.wake.notify_one();
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Relaxed);
        self.busy();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn the_epoch_ticks_only_while_requests_are_in_flight() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let idle = Arc::new(AtomicBool::new(true));
        let ticker = EpochTicker::start(
            {
                let ticks = ticks.clone();
                move || {
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            },
            {
                let idle = idle.clone();
                move || idle.load(Ordering::SeqCst)
            },
        )
        .expect("ticker");
        std::thread::sleep(EPOCH_TICK * 10);
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            0,
            "an idle server never ticks"
        );
        idle.store(false, Ordering::SeqCst);
        ticker.busy();
        std::thread::sleep(EPOCH_TICK * 10);
        let busy = ticks.load(Ordering::SeqCst);
        assert!(
            busy >= 3,
            "a busy server ticks every EPOCH_TICK: {busy} ticks"
        );
        idle.store(true, Ordering::SeqCst);
        std::thread::sleep(EPOCH_TICK * 3);
        let parked = ticks.load(Ordering::SeqCst);
        std::thread::sleep(EPOCH_TICK * 10);
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            parked,
            "idle again: no more ticks"
        );
        drop(ticker);
    }
}
