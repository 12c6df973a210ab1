//! One container's wasm memory budget, shared by all of its stores, and the store limiter that
//! draws from it.
//!
//! The container's memory limit (read by [`crate::memory`], handed over as
//! [`GuestConfig::memory_budget`](crate::state::GuestConfig::memory_budget)) bounds the container
//! as a whole, so every store of one program draws from a single [`MemoryBudget`]: a wasi:http
//! server's concurrent request stores together, never each on its own, or N requests could
//! together grow past the limit and have the kernel OOM-kill the container. The program's
//! compiled code is charged once, up front. A store's [`GuestLimiter`] reserves every linear
//! memory growth before wasmtime performs it and gives back everything it holds when it is
//! dropped with its store, whichever way the store's work ended: success, trap, deadline, a
//! client that went away (an aborted task drops its store too).
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use wasmtime::ResourceLimiter;

use crate::error::ShimError;

/// The wasm memory every store of one program may use together.
#[derive(Debug)]
pub struct MemoryBudget {
    /// Bytes of linear memory all stores may hold together (the allowance minus the code).
    capacity: usize,
    /// Bytes of compiled code charged up front.
    code: usize,
    /// Bytes the live stores hold.
    used: AtomicUsize,
    /// Frees memory held without need (idle reusable instances) when a growth would be
    /// refused; says whether it freed any.
    reclaim: OnceLock<Reclaim>,
}

/// [`MemoryBudget::on_pressure`]'s hook.
struct Reclaim(Box<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Reclaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reclaim")
    }
}

impl MemoryBudget {
    /// A budget of `allowance` bytes (what the container's memory limit leaves for wasm), of
    /// which `code` bytes are already taken by the program's compiled code.
    pub fn new(allowance: usize, code: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            capacity: allowance.saturating_sub(code),
            code,
            used: AtomicUsize::new(0),
            reclaim: OnceLock::new(),
        })
    }

    /// Sets what to call before refusing a growth: it frees what others hold without need (the
    /// idle instances of [`crate::instance_pool`]) and says whether it freed anything, and the
    /// growth is tried once more. Set once; later calls are ignored.
    pub fn on_pressure(&self, reclaim: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.reclaim.set(Reclaim(Box::new(reclaim)));
    }

    /// Reserves `bytes`, after reclaiming idle memory if the budget is short.
    fn reserve(&self, bytes: usize) -> Result<(), usize> {
        self.try_reserve(bytes)
            .or_else(|in_use| match self.reclaim.get() {
                Some(Reclaim(reclaim)) if reclaim() => self.try_reserve(bytes),
                _ => Err(in_use),
            })
    }

    /// The budget for a loaded program of `code` bytes, when the container has a limit at all:
    /// `allowance` (what the limit left when the container started), never more than the limit
    /// leaves now that the program is loaded (loading and compiling can leave the process
    /// holding memory the wasm stores then cannot have).
    pub fn for_program(allowance: Option<usize>, code: usize) -> Option<Arc<Self>> {
        let now = crate::memory::container_memory()
            .map(|(limit, usage)| crate::memory::store_budget(limit, usage));
        let allowance = match (allowance, now) {
            (Some(a), Some(n)) => a.min(n.saturating_add(code)),
            (a, _) => a?,
        };
        let budget = Self::new(allowance, code);
        tracing::info!(
            "wasm memory budget: {} bytes for linear memory, of the {allowance} bytes the \
             container's memory limit leaves ({code} bytes of compiled code charged up front)",
            budget.capacity
        );
        Some(budget)
    }

    /// Bytes of linear memory all stores may hold together.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of compiled code charged to the budget.
    pub fn code(&self) -> usize {
        self.code
    }

    /// Bytes the live stores hold now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Reserves `bytes`; on refusal, returns what was in use.
    fn try_reserve(&self, bytes: usize) -> Result<(), usize> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.capacity)
            })
            .map(drop)
    }

    fn release(&self, bytes: usize) {
        // Never below zero, whatever a caller does: a saturating update, not a plain sub.
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// Bytes of a compiled program's image (`Module::image_range` / `Component::image_range`).
pub fn code_size(image: Range<*const u8>) -> usize {
    (image.end as usize).saturating_sub(image.start as usize)
}

/// A growth the budget refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct MemoryRefusal {
    /// Bytes this store's linear memories would have held.
    pub desired: usize,
    /// Bytes the other stores held at that moment.
    pub others: usize,
    /// Bytes of linear memory all stores may hold together.
    pub capacity: usize,
}

impl MemoryRefusal {
    /// Whether the store alone needs more than the container's limit allows (so retrying,
    /// once other stores are gone, cannot help).
    pub fn exceeds_the_whole_budget(&self) -> bool {
        self.desired > self.capacity
    }

    fn describe(&self) -> String {
        if self.exceeds_the_whole_budget() {
            format!(
                "memory limit reached: growing wasm memory to {} bytes exceeds the {} bytes the \
                 container's memory limit leaves for wasm",
                self.desired, self.capacity
            )
        } else {
            format!(
                "memory limit reached: growing wasm memory to {} bytes while concurrent requests \
                 hold {} would exceed the {} bytes the container's memory limit leaves for wasm",
                self.desired, self.others, self.capacity
            )
        }
    }
}

/// Store limiter: reserves the store's linear memory in a shared [`MemoryBudget`], remembers a
/// refusal so the caller can report it as a memory-limit failure rather than a generic trap,
/// and releases what the store held when dropped.
#[derive(Debug, Default)]
pub struct GuestLimiter {
    budget: Option<Arc<MemoryBudget>>,
    /// Bytes this store's memories hold (all reserved in `budget`).
    held: usize,
    refused: Option<MemoryRefusal>,
}

impl GuestLimiter {
    /// A limiter drawing from `budget` (`None`: no limit).
    pub fn new(budget: Option<Arc<MemoryBudget>>) -> Self {
        GuestLimiter {
            budget,
            held: 0,
            refused: None,
        }
    }

    /// Bytes this store's memories hold.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The refused growth, if the guest hit the limit.
    pub fn refusal(&self) -> Option<MemoryRefusal> {
        self.refused
    }

    /// The refused growth as the error that ends a command (exit 137).
    pub fn refused(&self) -> Option<ShimError> {
        self.refused.map(|r| ShimError::MemoryLimit {
            desired: r.desired,
            limit: r.capacity,
        })
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // wasmtime refuses growth past the memory's maximum after asking: reserve nothing for it.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let delta = desired.saturating_sub(current);
        if let Some(budget) = &self.budget {
            if let Err(in_use) = budget.reserve(delta) {
                let refusal = MemoryRefusal {
                    desired: self.held.saturating_add(delta),
                    others: in_use.saturating_sub(self.held),
                    capacity: budget.capacity,
                };
                tracing::warn!("{refusal}");
                self.refused = Some(refusal);
                // Trap right here: Rust/C guests abort on a failed grow anyway, and the trap
                // carries a message that names the limit.
                return Err(wasmtime::Error::new(refusal));
            }
        }
        self.held = self.held.saturating_add(delta);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000_000)
    }
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.held);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wasmtime::{Engine, Instance, Module, Store, UpdateDeadline};

    use super::*;
    use crate::engine::{new_engine, Allocation};

    const MIB: usize = 1 << 20;
    const PAGE: usize = 64 << 10;

    #[test]
    fn code_is_charged_once_and_refusals_name_the_limit() {
        let budget = MemoryBudget::new(10 * MIB, 3 * MIB);
        assert_eq!(budget.capacity(), 7 * MIB);
        assert_eq!(budget.code(), 3 * MIB);
        assert_eq!(MemoryBudget::new(MIB, 2 * MIB).capacity(), 0);
        assert!(MemoryBudget::for_program(None, MIB).is_none());
        let image = [0u8; 100];
        assert_eq!(code_size(image.as_ptr_range()), 100);

        let mut l = GuestLimiter::new(Some(MemoryBudget::new(MIB, 0)));
        assert!(l.memory_growing(0, 512 << 10, None).expect("grow"));
        assert!(l.refused().is_none());
        let err = l
            .memory_growing(512 << 10, 2 * MIB, None)
            .expect_err("refused");
        assert!(err.to_string().contains("memory limit"), "{err}");
        assert!(matches!(
            l.refused(),
            Some(ShimError::MemoryLimit { desired, limit }) if desired == 2 * MIB && limit == MIB
        ));
        assert!(l.refusal().is_some_and(|r| r.exceeds_the_whole_budget()));
        let mut unlimited = GuestLimiter::new(None);
        assert!(unlimited.memory_growing(0, 1 << 30, None).expect("grow"));
        // Growth past the memory's own maximum fails in wasmtime: nothing is reserved for it.
        let budget = MemoryBudget::new(MIB, 0);
        let mut capped = GuestLimiter::new(Some(budget.clone()));
        assert!(!capped.memory_growing(0, 2 * PAGE, Some(PAGE)).expect("ask"));
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn idle_memory_is_reclaimed_before_a_growth_is_refused() {
        let budget = MemoryBudget::new(MIB, 0);
        let mut idle = GuestLimiter::new(Some(budget.clone()));
        assert!(idle.memory_growing(0, 768 << 10, None).expect("grow"));
        let mut busy = GuestLimiter::new(Some(budget.clone()));
        // No hook: the idle store's memory makes the budget refuse.
        busy.memory_growing(0, 512 << 10, None)
            .expect_err("refused while the idle store holds 768 KiB");
        let mut busy = GuestLimiter::new(Some(budget.clone()));
        let parked = Arc::new(std::sync::Mutex::new(Some(idle)));
        let calls = Arc::new(AtomicUsize::new(0));
        budget.on_pressure({
            let (parked, calls) = (parked.clone(), calls.clone());
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                parked.lock().expect("lock").take().is_some()
            }
        });
        assert!(busy.memory_growing(0, 512 << 10, None).expect("grow"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            budget.in_use(),
            512 << 10,
            "the idle store's memory went back"
        );
        // Nothing left to reclaim: refused, after asking once more.
        busy.memory_growing(512 << 10, 2 * MIB - 1, None)
            .expect_err("refused");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn concurrent_stores_draw_from_one_budget_and_release_it_when_dropped() {
        let budget = MemoryBudget::new(4 * MIB, 0);
        let mut a = GuestLimiter::new(Some(budget.clone()));
        let mut b = GuestLimiter::new(Some(budget.clone()));
        assert!(a.memory_growing(0, 3 * MIB, None).expect("a grows"));
        assert!(b.memory_growing(0, PAGE, None).expect("b starts"));
        assert_eq!(budget.in_use(), 3 * MIB + PAGE);
        // Each alone would fit the 4 MiB; together they do not.
        b.memory_growing(PAGE, 2 * MIB, None)
            .expect_err("b refused while a holds 3 MiB");
        let refusal = b.refusal().expect("recorded");
        assert_eq!(
            refusal,
            MemoryRefusal {
                desired: 2 * MIB,
                others: 3 * MIB,
                capacity: 4 * MIB
            }
        );
        assert!(!refusal.exceeds_the_whole_budget());
        assert!(
            refusal.to_string().contains("concurrent requests"),
            "{refusal}"
        );
        assert_eq!(
            budget.in_use(),
            3 * MIB + PAGE,
            "a refusal reserves nothing"
        );
        drop(a);
        assert_eq!(budget.in_use(), PAGE);
        assert!(b.memory_growing(PAGE, 2 * MIB, None).expect("b grows now"));
        assert_eq!(b.held(), 2 * MIB);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    /// Memory of one page, `grow(pages) -> old size or -1`, `trap`, and `spin` (never returns).
    const GUEST: &str = r#"(module
        (memory (export "memory") 1)
        (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
        (func (export "trap") unreachable)
        (func (export "spin") (loop (br 0))))"#;

    fn store(engine: &Engine, budget: &Arc<MemoryBudget>) -> Store<GuestLimiter> {
        let mut store = Store::new(engine, GuestLimiter::new(Some(budget.clone())));
        store.limiter(|l| l);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store
    }

    async fn grown(
        engine: &Engine,
        module: &Module,
        budget: &Arc<MemoryBudget>,
        pages: i32,
    ) -> (Store<GuestLimiter>, Instance) {
        let mut store = store(engine, budget);
        let instance = Instance::new_async(&mut store, module, &[])
            .await
            .expect("instantiate");
        let grow = instance
            .get_typed_func::<i32, i32>(&mut store, "grow")
            .expect("grow");
        assert_eq!(grow.call_async(&mut store, pages).await.expect("grow"), 1);
        (store, instance)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wasm_stores_release_their_memory_on_every_path() {
        let engine = new_engine(Allocation::Pooling).expect("engine");
        let module = Module::new(&engine, GUEST).expect("compile");
        let budget = MemoryBudget::new(64 * MIB, 0);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (engine, done) = (engine.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    engine.increment_epoch();
                }
            })
        };

        // Normal end.
        let (store, _) = grown(&engine, &module, &budget, 16).await;
        assert_eq!(budget.in_use(), 17 * PAGE);
        drop(store);
        assert_eq!(budget.in_use(), 0);

        // A trap.
        let (mut store, instance) = grown(&engine, &module, &budget, 16).await;
        let trap = instance
            .get_typed_func::<(), ()>(&mut store, "trap")
            .expect("trap");
        trap.call_async(&mut store, ()).await.expect_err("traps");
        assert_eq!(budget.in_use(), 17 * PAGE, "held until the store goes");
        drop(store);
        assert_eq!(budget.in_use(), 0);

        // A refused growth: a clean trap naming the limit; the other store keeps its share.
        let (big, _) = grown(&engine, &module, &budget, 600).await;
        let (mut store, instance) = grown(&engine, &module, &budget, 16).await;
        let grow = instance
            .get_typed_func::<i32, i32>(&mut store, "grow")
            .expect("grow");
        let err = grow.call_async(&mut store, 600).await.expect_err("refused");
        assert!(
            store
                .data()
                .refusal()
                .is_some_and(|r| r.others == 601 * PAGE),
            "{err:?}"
        );
        drop(store);
        assert_eq!(budget.in_use(), 601 * PAGE);
        drop(big);
        assert_eq!(budget.in_use(), 0);

        // A task aborted mid-call (a deadline, a client that went away).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let (engine, module, budget) = (engine.clone(), module.clone(), budget.clone());
            async move {
                let (mut store, instance) = grown(&engine, &module, &budget, 16).await;
                let spin = instance
                    .get_typed_func::<(), ()>(&mut store, "spin")
                    .expect("spin");
                let _ = tx.send(());
                spin.call_async(&mut store, ()).await
            }
        });
        rx.await.expect("spinning");
        assert_eq!(budget.in_use(), 17 * PAGE);
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
        assert_eq!(budget.in_use(), 0);
        done.store(true, Ordering::Relaxed);
        ticker.join().expect("ticker");
    }
}
