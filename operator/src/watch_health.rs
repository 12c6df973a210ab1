//! Health of the controllers' watches, for `/readyz` and `wasmkube_operator_watch_healthy`.
//!
//! [`observe`] wraps a raw `watcher()` stream (before its [`WatchBackoff`], so it sees every
//! error) and keeps the state of one named watch in a shared [`WatchHealth`]:
//! - a watch is *listed* once its list completes (`InitDone`); a new `Init` means it re-lists
//!   (after a failed list, a 410 Gone or a missing resourceVersion) and is not listed until the
//!   matching `InitDone`;
//! - an error marks it *failing*; an `Apply`, `Delete` or `InitDone` clears that. A watch that
//!   failed to (re)start and then recovered says nothing until an object changes, which in a
//!   quiet cluster may be never, so a failure not repeated for [`QUIET_RECOVERY`] is taken as
//!   recovered: a persisting failure repeats at least every ~35 s (the 5 s back-off cap of
//!   [`WatchBackoff`] plus the 30 s connect timeout). A failure that was only the API server's
//!   absence (connect, TLS, a dropped connection) ends sooner: while one lasts, [`probe_api`] asks the API server for its
//!   version every 5 s, and once it has answered for [`API_RECOVERY`] (longer than the watcher's
//!   back-off cap, so the watch has tried again since) the failures from before are taken as
//!   recovered; a retry that failed again records a newer failure, which stays.
//!
//! A watch is healthy when it is listed and not failing.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use kube::{core::Status, runtime::watcher};
use tracing::warn;

/// How long after its last error a failing watch that keeps quiet is taken as recovered.
pub const QUIET_RECOVERY: Duration = Duration::from_secs(120);
/// How long the API server must have answered (see [`WatchHealth::api_answered`]) before a
/// watch whose failures were all transport errors from before that is taken as recovered:
/// several times the watcher's back-off cap ([`WatchBackoff::MAX`], 5 s), so it has tried again
/// since (a watch request can wait on a restarting API server's caches for tens of seconds), and
/// a retry that failed would have recorded a newer failure.
pub const API_RECOVERY: Duration = Duration::from_secs(35);

/// The back-off between a watch's retries (`.backoff(WatchBackoff::default())` in place of
/// kube-runtime's `.default_backoff()`): [`WatchBackoff::MIN`] doubling to [`WatchBackoff::MAX`],
/// back to the minimum after any event. kube-runtime's default grows to 30 s plus up to 100 %
/// jitter, so after an API server outage a watch waited up to a minute to find the server back,
/// and up to a minute again after the 410 that makes it re-list: the operator stayed unready
/// (and blind to changes) for over two minutes. A few watches retrying every 5 s are no load
/// for an API server.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    pub const MIN: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: WatchBackoff::MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(WatchBackoff::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WatchBackoff::MIN;
    }
}

/// The state of every observed watch; cloning shares it.
#[derive(Clone, Debug)]
pub struct WatchHealth {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    quiet_recovery: Duration,
    api_recovery: Duration,
    /// Since when the API server has answered every probe, if it does.
    api_answering_since: Option<Instant>,
    watches: BTreeMap<&'static str, WatchState>,
}

#[derive(Debug, Default)]
struct WatchState {
    listed: bool,
    failure: Option<Failure>,
    errors: u64,
}

#[derive(Debug)]
struct Failure {
    at: Instant,
    message: String,
    /// No answer from the API server at all (connect, TLS, a dropped connection).
    transport: bool,
}

/// One watch, as `/readyz` and `/metrics` report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchStatus {
    pub name: &'static str,
    /// Why the watch is unhealthy; `None` when healthy.
    pub problem: Option<String>,
    /// Errors seen since the watch was registered.
    pub errors: u64,
}

impl WatchStatus {
    pub fn healthy(&self) -> bool {
        self.problem.is_none()
    }
}

impl Default for WatchHealth {
    fn default() -> Self {
        WatchHealth::with_quiet_recovery(QUIET_RECOVERY)
    }
}

impl WatchHealth {
    /// A registry in which a failing watch that keeps quiet for `quiet_recovery` is recovered.
    pub fn with_quiet_recovery(quiet_recovery: Duration) -> Self {
        WatchHealth::with_recovery(quiet_recovery, API_RECOVERY)
    }

    /// As [`WatchHealth::with_quiet_recovery`], and transport failures from before the API
    /// server answered again are recovered after it answered for `api_recovery`.
    pub fn with_recovery(quiet_recovery: Duration, api_recovery: Duration) -> Self {
        WatchHealth {
            inner: Arc::new(Mutex::new(Inner {
                quiet_recovery,
                api_recovery,
                api_answering_since: None,
                watches: BTreeMap::new(),
            })),
        }
    }

    /// Whether a watch fails for want of the API server itself, which a probe can tell
    /// recovered: a watch that restarts cleanly says nothing until an object changes.
    pub fn waits_for_the_api(&self) -> bool {
        let now = Instant::now();
        let inner = self.lock();
        inner.watches.values().any(|w| {
            w.failure.as_ref().is_some_and(|f| f.transport) && w.problem(now, &inner).is_some()
        })
    }

    /// The result of a probe of the API server (a cheap request made while
    /// [`WatchHealth::waits_for_the_api`]).
    pub fn api_answered(&self, ok: bool) {
        let mut inner = self.lock();
        inner.api_answering_since = match (ok, inner.api_answering_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(Instant::now()),
            (false, _) => None,
        };
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `name` as a watch that has not listed yet (or starts it over).
    pub fn register(&self, name: &'static str) {
        self.lock().watches.insert(name, WatchState::default());
    }

    /// Forgets every watch (the controllers that owned them stopped: a replica back to standby
    /// after losing the lease has none, and its readiness is its own flag again).
    pub fn clear(&self) {
        self.lock().watches.clear();
    }

    /// Every registered watch, by name.
    pub fn statuses(&self) -> Vec<WatchStatus> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .watches
            .iter()
            .map(|(&name, state)| WatchStatus {
                name,
                problem: state.problem(now, &inner),
                errors: state.errors,
            })
            .collect()
    }

    /// The registered watches that are not healthy.
    pub fn unhealthy(&self) -> Vec<WatchStatus> {
        let mut all = self.statuses();
        all.retain(|s| !s.healthy());
        all
    }

    fn record<K>(&self, name: &'static str, item: &Result<watcher::Event<K>, watcher::Error>) {
        let mut inner = self.lock();
        let state = inner.watches.entry(name).or_default();
        match item {
            Ok(watcher::Event::Init) => state.listed = false,
            Ok(watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                state.listed = true;
                state.failure = None;
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => state.failure = None,
            Err(e) => {
                state.errors = state.errors.saturating_add(1);
                state.failure = Some(Failure {
                    at: Instant::now(),
                    message: describe(e),
                    transport: api_status(e).is_none()
                        && !matches!(e, watcher::Error::NoResourceVersion),
                });
                drop(inner);
                log_error(name, e);
            }
        }
    }
}

impl WatchState {
    fn problem(&self, now: Instant, inner: &Inner) -> Option<String> {
        let answered_since_then = |f: &Failure| {
            f.transport
                && inner.api_answering_since.is_some_and(|since| {
                    f.at < since && now.saturating_duration_since(since) >= inner.api_recovery
                })
        };
        let recent = self.failure.as_ref().filter(|f| {
            now.saturating_duration_since(f.at) < inner.quiet_recovery && !answered_since_then(f)
        });
        match (recent, self.listed, &self.failure) {
            (Some(f), _, _) => Some(format!("failing: {}", f.message)),
            (None, true, _) => None,
            (None, false, Some(f)) => Some(format!("not listed; last error: {}", f.message)),
            (None, false, None) => Some("initial list not complete".to_string()),
        }
    }
}

/// The API server's answer inside a watch error, if the error is one.
fn api_status(e: &watcher::Error) -> Option<&Status> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(s),
        _ => None,
    }
}

/// Which step of the watch failed.
fn phase(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(_) => "list",
        watcher::Error::WatchStartFailed(_) => "watch start",
        watcher::Error::WatchError(_) | watcher::Error::WatchFailed(_) => "watch",
        watcher::Error::NoResourceVersion => "resource version",
    }
}

fn describe(e: &watcher::Error) -> String {
    match api_status(e) {
        Some(s) => format!("{} {} ({}): {}", phase(e), s.reason, s.code, s.message),
        None => e.to_string(),
    }
}

fn log_error(name: &'static str, e: &watcher::Error) {
    let phase = phase(e);
    match api_status(e) {
        Some(s) => warn!(
            watch = name,
            phase,
            code = s.code,
            reason = %s.reason,
            // `message` is the event's own field in tracing: the API's message goes in `error`.
            error = %s.message,
            "watch failed"
        ),
        None => warn!(watch = name, phase, error = %e, "watch failed"),
    }
}

/// While a watch fails for want of the API server, asks the API server for its version every
/// 5 s and tells `health` whether it answered (see [`WatchHealth::api_answered`]); no request
/// otherwise. Runs until `stop` resolves.
pub async fn probe_api(
    client: kube::Client,
    health: WatchHealth,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if health.waits_for_the_api() {
            let answered = client.apiserver_version().await.is_ok();
            health.api_answered(answered);
        }
    }
}

/// Drops the errors of a trigger stream before it reaches a kube-runtime `Controller`. They are
/// recorded and logged by [`observe`] and the back-off has been applied, so the Controller has
/// nothing to do with them, and passing them on stalls it: kube-runtime 5's applier splits its
/// input into Ok and Err branches over one peeked stream, and an error peeked by the Ok branch
/// after the Err branch was polled in the same round returns `Pending` with no waker set, so
/// nothing is read again until an unrelated wake-up. After a 30 s API server outage (dozens of
/// watch errors) the app controller stopped reading its watches for 1-4 minutes while `kubectl`
/// listed the same resources in 50 ms.
pub fn without_errors<S, T, E>(stream: S) -> impl Stream<Item = Result<T, E>>
where
    S: Stream<Item = Result<T, E>>,
{
    stream.filter(|item| futures::future::ready(item.is_ok()))
}

/// Registers the watch `name` in `health` and keeps its state from the events of `stream`, a
/// raw `watcher()` stream; place it before the back-off ([`WatchBackoff`]).
pub fn observe<S, K>(
    stream: S,
    health: WatchHealth,
    name: &'static str,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    health.register(name);
    stream.inspect(move |item| health.record(name, item))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn triggers_reach_a_controller_without_their_errors() {
        use futures::StreamExt as _;
        let items: Vec<Result<u8, &str>> = vec![Ok(1), Err("gone"), Ok(2), Err("again")];
        let kept: Vec<_> = super::without_errors(futures::stream::iter(items))
            .collect()
            .await;
        assert_eq!(kept, [Ok(1), Ok(2)]);
    }

    #[test]
    fn the_watch_backoff_doubles_to_five_seconds_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut b = super::WatchBackoff::default();
        let ms: Vec<u128> = b.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next().map(|d| d.as_millis()), Some(500));
    }

    use std::{
        io::Write,
        sync::{Arc, Mutex},
    };

    use futures::{stream, StreamExt};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{core::Status, runtime::watcher::Event};

    use super::*;

    fn forbidden() -> watcher::Error {
        watcher::Error::WatchStartFailed(kube::Error::Api(
            Status::failure("wasmapps.wasmkube.dev is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        ))
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
        }
    }

    #[tokio::test]
    async fn listed_then_failing_then_recovered() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let health = WatchHealth::default();
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(ConfigMap::default())),
            Ok(Event::InitDone),
            Err(forbidden()),
            Ok(Event::Apply(ConfigMap::default())),
        ];
        let mut watch = Box::pin(observe(stream::iter(events), health.clone(), "apps"));
        let problem = || health.statuses().first().and_then(|s| s.problem.clone());

        assert_eq!(problem().as_deref(), Some("initial list not complete"));
        watch.next().await; // Init
        watch.next().await; // InitApply
        assert!(problem().is_some(), "not healthy before the list completes");
        watch.next().await; // InitDone
        assert_eq!(problem(), None, "healthy once listed");
        assert!(health.unhealthy().is_empty());

        assert!(
            matches!(watch.next().await, Some(Err(_))),
            "errors pass through"
        );
        let unhealthy = health.unhealthy();
        assert_eq!(unhealthy.len(), 1);
        assert_eq!(unhealthy[0].name, "apps");
        assert_eq!(unhealthy[0].errors, 1);
        assert_eq!(
            unhealthy[0].problem.as_deref(),
            Some("failing: watch start Forbidden (403): wasmapps.wasmkube.dev is forbidden")
        );
        let logged = logs.text();
        assert!(logged.contains("WARN"), "{logged}");
        assert!(logged.contains("watch failed"), "{logged}");
        assert!(logged.contains("watch=\"apps\""), "{logged}");
        assert!(logged.contains("code=403"), "{logged}");
        assert!(logged.contains("reason=Forbidden"), "{logged}");
        assert!(
            logged.contains("error=wasmapps.wasmkube.dev is forbidden"),
            "{logged}"
        );

        watch.next().await; // Apply
        assert_eq!(problem(), None, "a successful event recovers it");
        assert_eq!(health.statuses()[0].errors, 1, "the count stays");
    }

    #[tokio::test]
    async fn a_failed_list_needs_a_new_list_and_quiet_restarts_recover() {
        let health = WatchHealth::with_quiet_recovery(Duration::ZERO);
        let list_failed = watcher::Error::InitialListFailed(kube::Error::Api(
            Status::failure("etcdserver: request timed out", "InternalError")
                .with_code(500)
                .boxed(),
        ));
        let events: Vec<Result<Event<ConfigMap>, _>> = vec![
            Ok(Event::Init),
            Err(list_failed),
            Ok(Event::Init),
            Ok(Event::InitDone),
            Err(forbidden()),
        ];
        let mut watch = Box::pin(observe(stream::iter(events), health.clone(), "nodes"));
        watch.next().await;
        watch.next().await;
        // Quiet for longer than the (zero) window, but the list never completed.
        assert_eq!(
            health.statuses()[0].problem.as_deref(),
            Some("not listed; last error: list InternalError (500): etcdserver: request timed out")
        );
        watch.next().await;
        watch.next().await;
        assert!(health.unhealthy().is_empty());
        // A failed watch restart with nothing after it: recovered once quiet.
        watch.next().await;
        assert!(health.unhealthy().is_empty());
        assert_eq!(health.statuses()[0].errors, 2);
    }

    #[tokio::test]
    async fn transport_failures_recover_once_the_api_answers_again() {
        let health = WatchHealth::with_recovery(Duration::from_secs(3600), Duration::ZERO);
        let unreachable = || {
            watcher::Error::WatchStartFailed(kube::Error::Service(
                std::io::Error::other("client error (Connect)").into(),
            ))
        };
        let events: Vec<Result<Event<ConfigMap>, _>> = vec![
            Ok(Event::Init),
            Ok(Event::InitDone),
            Err(unreachable()),
            Err(forbidden()),
        ];
        let mut watch = Box::pin(observe(stream::iter(events), health.clone(), "apps"));
        watch.next().await;
        watch.next().await;
        watch.next().await;
        assert!(health.waits_for_the_api());
        assert_eq!(
            health.unhealthy().len(),
            1,
            "failing while the API is silent"
        );
        health.api_answered(false);
        assert_eq!(
            health.unhealthy().len(),
            1,
            "a failed probe changes nothing"
        );
        health.api_answered(true);
        assert!(
            health.unhealthy().is_empty(),
            "the API answered after the failure (for the zero window): recovered"
        );
        assert!(!health.waits_for_the_api());
        // A failure the API server answered (403) is not cured by the API answering.
        watch.next().await;
        assert_eq!(health.unhealthy().len(), 1);
        assert!(!health.waits_for_the_api());
        health.api_answered(true);
        assert_eq!(health.unhealthy().len(), 1);
    }

    #[test]
    fn errors_without_an_api_status_are_described() {
        let e = watcher::Error::NoResourceVersion;
        assert!(api_status(&e).is_none());
        assert!(describe(&e).contains("resourceVersion"), "{}", describe(&e));
    }
}
