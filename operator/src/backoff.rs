//! Per-object exponential backoff for `error_policy`: 5 s, 10 s, 20 s … capped at 5 minutes,
//! reset by the next successful reconcile, forgotten when the object is deleted.
//!
//! Bounded: a failing object is retried at least every [`MAX`], so a failure not repeated for
//! [`EXPIRY`] (twice that) belongs to an object no longer reconciled (deleted while the watch
//! was down, so no `Delete` event came) and is dropped.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use kube::runtime::watcher;

const BASE: Duration = Duration::from_secs(5);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(300);
/// A failure not repeated for this long is forgotten.
pub const EXPIRY: Duration = MAX.saturating_mul(2);

#[derive(Debug)]
struct Failures {
    count: u32,
    last: Instant,
}

#[derive(Debug)]
struct State<K> {
    failures: HashMap<K, Failures>,
    pruned: Instant,
}

/// Failure counts by object; cloning shares them (so a watch stream can forget what
/// `error_policy` recorded).
#[derive(Debug)]
pub struct ErrorBackoff<K> {
    state: Arc<Mutex<State<K>>>,
}

impl<K> Clone for ErrorBackoff<K> {
    fn clone(&self) -> Self {
        ErrorBackoff {
            state: Arc::clone(&self.state),
        }
    }
}

impl<K> Default for ErrorBackoff<K> {
    fn default() -> Self {
        ErrorBackoff {
            state: Arc::new(Mutex::new(State {
                failures: HashMap::new(),
                pruned: Instant::now(),
            })),
        }
    }
}

impl<K: Eq + Hash> ErrorBackoff<K> {
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn next_delay(&self, key: K) -> Duration {
        self.next_delay_at(key, Instant::now())
    }

    fn next_delay_at(&self, key: K, now: Instant) -> Duration {
        let mut state = self.lock();
        // At most one sweep per MAX, so many failing objects do not make this quadratic.
        if now.saturating_duration_since(state.pruned) >= MAX {
            state
                .failures
                .retain(|_, f| now.saturating_duration_since(f.last) < EXPIRY);
            state.pruned = now;
        }
        let f = state.failures.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(f.last) >= EXPIRY {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        let factor = 1u32
            .checked_shl(f.count.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        BASE.saturating_mul(factor).min(MAX)
    }

    /// Forgets the failures of `key` after a success.
    pub fn reset(&self, key: &K) {
        self.forget(key);
    }

    /// Forgets the failures of `key`, an object that no longer exists.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// How many objects have failures on record.
    pub fn tracked(&self) -> usize {
        self.lock().failures.len()
    }

    /// A hook for a watcher stream (`StreamExt::inspect`) that forgets the failures of each
    /// deleted object; `key` maps the object to the key `error_policy` uses.
    pub fn forget_deleted<O>(
        &self,
        key: impl Fn(&O) -> K,
    ) -> impl FnMut(&Result<watcher::Event<O>, watcher::Error>) {
        let backoff = self.clone();
        move |item| {
            if let Ok(watcher::Event::Delete(obj)) = item {
                backoff.forget(&key(obj));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{stream, StreamExt};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{api::ObjectMeta, runtime::watcher::Event};

    use super::*;

    #[test]
    fn doubles_then_caps_then_resets() {
        let b = ErrorBackoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay("a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next_delay("b").as_secs(), 5, "per object");
        b.reset(&"a");
        assert_eq!(b.next_delay("a").as_secs(), 5);
    }

    #[test]
    fn forget_drops_the_entry() {
        let b = ErrorBackoff::default();
        b.next_delay("gone");
        b.next_delay("gone");
        b.next_delay("kept");
        assert_eq!(b.tracked(), 2);
        b.forget(&"gone");
        assert_eq!(b.tracked(), 1);
        assert_eq!(b.next_delay("gone").as_secs(), 5, "starts over");
        assert_eq!(
            b.next_delay("kept").as_secs(),
            10,
            "others keep their count"
        );
    }

    #[test]
    fn old_failures_expire() {
        let b = ErrorBackoff::default();
        let t0 = Instant::now();
        for i in 0..100 {
            b.next_delay_at(i, t0);
        }
        b.next_delay_at(1000, t0 + MAX);
        assert_eq!(b.tracked(), 101, "failures younger than EXPIRY stay");
        let later = t0 + EXPIRY + Duration::from_secs(1);
        assert_eq!(
            b.next_delay_at(7, later).as_secs(),
            5,
            "an old count restarts"
        );
        assert_eq!(
            b.tracked(),
            2,
            "the other 99 old entries were swept: {{7, 1000}}"
        );
        assert_eq!(
            b.next_delay_at(1000, later).as_secs(),
            10,
            "a recent failure keeps counting"
        );
    }

    #[tokio::test]
    async fn a_delete_event_forgets_the_object() {
        let b: ErrorBackoff<String> = ErrorBackoff::default();
        b.next_delay("a".into());
        b.next_delay("b".into());
        let cm = |name: &str| ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let events: Vec<Result<Event<ConfigMap>, watcher::Error>> = vec![
            Ok(Event::Apply(cm("b"))),
            Ok(Event::Delete(cm("a"))),
            Err(watcher::Error::NoResourceVersion),
        ];
        let seen = stream::iter(events)
            .inspect(b.forget_deleted(|o: &ConfigMap| o.metadata.name.clone().unwrap_or_default()))
            .count()
            .await;
        assert_eq!(seen, 3, "events pass through");
        assert_eq!(b.tracked(), 1);
        assert_eq!(
            b.next_delay("b".into()).as_secs(),
            10,
            "only `a` was forgotten"
        );
    }
}
