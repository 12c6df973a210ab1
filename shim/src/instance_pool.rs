//! Opt-in reuse of wasi:http instances (`spec.http.instanceReuse`, [`InstanceReuse`]).
//!
//! By default every request gets a fresh instance. With reuse on, an instance that served a
//! request to its end goes back to this pool and serves a later one, so the guest's
//! initialisation (a JavaScript engine's heap, a Python interpreter) is paid once per instance
//! instead of once per request. The rules:
//!
//! - **Only a clean end returns an instance.** The caller gives an instance back only after the
//!   guest returned normally; an instance that trapped, ran past its deadline, was refused
//!   memory or lost its client (its task aborted) is dropped with its [`Lease`], never reused.
//! - **Counts.** An instance serves at most `max_requests` requests, one at a time (a wasi:http
//!   0.2 export is not re-entrant); at most `max_instances` reusable instances live at once,
//!   idle or serving. A request that finds none idle while that many live gets a one-shot
//!   instance ([`Checkout::OneShot`]) that is dropped after it.
//! - **Idle timeout.** [`InstancePool::reap_idle`] drops an instance idle for `idle_timeout`.
//!   It sleeps until the next instance expires and not at all while none is idle, so an idle
//!   pod does not wake up for nothing.
//! - **Memory.** Idle instances keep their linear memory, reserved in the container's
//!   [`MemoryBudget`](crate::budget::MemoryBudget) like any store's; when a growth would be
//!   refused, the budget first asks the pool to drop its idle instances
//!   ([`InstancePool::drop_idle`]) and tries again, so idle instances never cost a request its
//!   memory.
//! - **One app.** A pool belongs to one server, which serves one component: an instance never
//!   serves another app.
//!
//! The pool is generic over the instance so its rules are tested without wasmtime.
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How instances are reused (read from the container's environment, [`crate::limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceReuse {
    /// Requests one instance serves before it is dropped.
    pub max_requests: u32,
    /// Reusable instances alive at once, idle or serving.
    pub max_instances: usize,
    /// How long an instance may stay idle.
    pub idle_timeout: Duration,
}

/// Instances between requests.
pub struct InstancePool<T> {
    settings: InstanceReuse,
    state: Mutex<PoolState<T>>,
    /// Signalled when an instance becomes idle: the reaper's next expiry may be earlier.
    became_idle: Notify,
}

struct PoolState<T> {
    /// Idle instances, the most recently used last (taken first: its pages are warmest).
    idle: Vec<Idle<T>>,
    /// Reusable instances alive: idle, plus those out on a [`Lease`].
    live: usize,
    /// Reuse turned off for good ([`InstancePool::disable`]): every request is one-shot.
    disabled: bool,
}

struct Idle<T> {
    instance: T,
    served: u32,
    since: Instant,
}

/// What a request runs on.
pub enum Checkout<T> {
    /// An idle instance; give it back through the lease after a clean end.
    Warm(Lease<T>, T),
    /// Room for another reusable instance: make one, and give it back through the lease.
    New(Lease<T>),
    /// Every reusable instance is serving: a fresh instance for this request only.
    OneShot,
}

/// A reusable instance out of the pool, serving a request. Dropped without
/// [`Lease::give_back`] (a trap, a deadline, an aborted task), its instance is retired.
pub struct Lease<T> {
    pool: Arc<InstancePool<T>>,
    /// Requests the instance served before this one.
    served: u32,
    open: bool,
}

impl<T> InstancePool<T> {
    pub fn new(settings: InstanceReuse) -> Arc<Self> {
        Arc::new(InstancePool {
            settings,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                live: 0,
                disabled: false,
            }),
            became_idle: Notify::new(),
        })
    }

    pub fn settings(&self) -> InstanceReuse {
        self.settings
    }

    fn lock(&self) -> MutexGuard<'_, PoolState<T>> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An instance for the next request.
    pub fn checkout(self: &Arc<Self>) -> Checkout<T> {
        let mut state = self.lock();
        if state.disabled {
            return Checkout::OneShot;
        }
        if let Some(idle) = state.idle.pop() {
            return Checkout::Warm(self.lease(idle.served), idle.instance);
        }
        if state.live < self.settings.max_instances {
            state.live += 1;
            return Checkout::New(self.lease(0));
        }
        Checkout::OneShot
    }

    fn lease(self: &Arc<Self>, served: u32) -> Lease<T> {
        Lease {
            pool: self.clone(),
            served,
            open: true,
        }
    }

    /// (idle, live) reusable instances now.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.idle.len(), state.live)
    }

    /// Drops every idle instance (their memory goes back to the budget); returns how many.
    pub fn drop_idle(&self) -> usize {
        let dropped: Vec<Idle<T>> = {
            let mut state = self.lock();
            let dropped = std::mem::take(&mut state.idle);
            state.live -= dropped.len();
            dropped
        };
        // Outside the lock: dropping a store releases its memory and its pool slot.
        dropped.len()
    }

    /// Turns reuse off for good, for an app whose instances cannot serve a second request: the
    /// idle instances are dropped, those serving are retired when they end, and every later
    /// request is one-shot. Returns whether reuse was on until now.
    pub fn disable(&self) -> bool {
        let was_on = !std::mem::replace(&mut self.lock().disabled, true);
        self.drop_idle();
        was_on
    }

    /// Drops the instances idle for the idle timeout; returns when the next one will be due.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let timeout = self.settings.idle_timeout;
        let (expired, next): (Vec<Idle<T>>, Option<Instant>) = {
            let mut state = self.lock();
            let (expired, kept) = std::mem::take(&mut state.idle)
                .into_iter()
                .partition(|i: &Idle<T>| i.since + timeout <= now);
            state.idle = kept;
            state.live -= expired.len();
            let next = state.idle.iter().map(|i| i.since + timeout).min();
            (expired, next)
        };
        if !expired.is_empty() {
            tracing::debug!(
                "{} idle instance(s) dropped after {timeout:?}",
                expired.len()
            );
        }
        next
    }

    /// Drops instances as they reach the idle timeout; runs until its task is aborted.
    pub async fn reap_idle(self: Arc<Self>) {
        loop {
            match self.expire(Instant::now()) {
                Some(due) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = self.became_idle.notified() => {}
                    }
                }
                None => self.became_idle.notified().await,
            }
        }
    }
}

impl<T> Lease<T> {
    /// The pool the instance belongs to.
    pub fn pool(&self) -> &Arc<InstancePool<T>> {
        &self.pool
    }

    /// Requests the instance served before this one.
    pub fn served(&self) -> u32 {
        self.served
    }

    /// Gives the instance back after it served its request to the end: idle again, unless it
    /// has now served `max_requests`.
    pub fn give_back(mut self, instance: T) {
        self.open = false;
        let served = self.served.saturating_add(1);
        let pool = &self.pool;
        if served >= pool.settings.max_requests || pool.lock().disabled {
            pool.lock().live -= 1;
            drop(instance);
            return;
        }
        pool.lock().idle.push(Idle {
            instance,
            served,
            since: Instant::now(),
        });
        pool.became_idle.notify_one();
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        if self.open {
            self.pool.lock().live -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_requests: u32, max_instances: usize, idle_ms: u64) -> Arc<InstancePool<u32>> {
        InstancePool::new(InstanceReuse {
            max_requests,
            max_instances,
            idle_timeout: Duration::from_millis(idle_ms),
        })
    }

    /// Serves one request: the instance it ran on and how many it had served before.
    fn serve(pool: &Arc<InstancePool<u32>>, next_id: &mut u32) -> (Option<u32>, u32) {
        match pool.checkout() {
            Checkout::Warm(lease, id) => {
                let served = lease.served();
                lease.give_back(id);
                (Some(id), served)
            }
            Checkout::New(lease) => {
                *next_id += 1;
                lease.give_back(*next_id);
                (Some(*next_id), 0)
            }
            Checkout::OneShot => (None, 0),
        }
    }

    #[test]
    fn an_instance_serves_max_requests_then_a_new_one_is_made() {
        let p = pool(3, 1, 60_000);
        let mut next = 0;
        let runs: Vec<_> = (0..7).map(|_| serve(&p, &mut next)).collect();
        assert_eq!(
            runs,
            vec![
                (Some(1), 0),
                (Some(1), 1),
                (Some(1), 2),
                (Some(2), 0),
                (Some(2), 1),
                (Some(2), 2),
                (Some(3), 0)
            ]
        );
        assert_eq!(p.counts(), (1, 1), "one idle instance, nothing else alive");
    }

    #[test]
    fn a_lease_dropped_without_give_back_retires_its_instance() {
        let p = pool(100, 1, 60_000);
        let Checkout::New(lease) = p.checkout() else {
            panic!("an empty pool makes a new instance");
        };
        assert!(
            matches!(p.checkout(), Checkout::OneShot),
            "the only reusable instance is out: the next request gets a one-shot instance"
        );
        drop(lease); // the guest trapped
        assert_eq!(p.counts(), (0, 0));
        assert!(
            matches!(p.checkout(), Checkout::New(_)),
            "a trapped instance is never handed out again: a new one is made"
        );
    }

    #[test]
    fn at_most_max_instances_live_and_the_rest_are_one_shot() {
        let p = pool(100, 2, 60_000);
        let a = p.checkout();
        let b = p.checkout();
        let c = p.checkout();
        assert!(matches!(a, Checkout::New(_)) && matches!(b, Checkout::New(_)));
        assert!(matches!(c, Checkout::OneShot));
        assert_eq!(p.counts(), (0, 2));
        for (checkout, id) in [(a, 1), (b, 2)] {
            if let Checkout::New(lease) = checkout {
                lease.give_back(id);
            }
        }
        assert_eq!(p.counts(), (2, 2));
        // The most recently returned instance is taken first.
        assert!(matches!(p.checkout(), Checkout::Warm(_, 2)));
        assert_eq!(p.drop_idle(), 1, "instance 1 was idle; instance 2 was out");
        assert_eq!(p.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_instances_are_dropped_after_the_idle_timeout_and_not_before() {
        let p = pool(100, 4, 1000);
        let reaper = tokio::spawn(p.clone().reap_idle());
        let mut next = 0;
        assert_eq!(serve(&p, &mut next), (Some(1), 0));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(serve(&p, &mut next), (Some(1), 1), "idle 600 ms: reused");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            p.counts(),
            (1, 1),
            "idle 600 ms since its last request: kept"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(p.counts(), (0, 0), "idle 1100 ms: dropped");
        assert_eq!(serve(&p, &mut next), (Some(2), 0), "a fresh instance");
        reaper.abort();
    }

    #[test]
    fn a_disabled_pool_hands_out_one_shot_instances_only() {
        let pool = pool(100, 2, 60_000);
        let mut next_id = 0;
        let (first, _) = serve(&pool, &mut next_id);
        let Checkout::Warm(lease, id) = pool.checkout() else {
            panic!("the first instance is idle");
        };
        assert_eq!(Some(id), first);
        assert!(pool.disable(), "reuse was on");
        assert!(!pool.disable(), "already off");
        lease.give_back(id);
        assert_eq!(pool.counts(), (0, 0), "given back after disable: retired");
        assert!(matches!(pool.checkout(), Checkout::OneShot));
    }
}
