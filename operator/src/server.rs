//! The operator's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
//!
//! `/readyz` is 200 when the process is ready and every registered watch is healthy (see
//! [`crate::watch_health`]). Only a leader's controllers register watches, so a standby, whose
//! job is to wait, stays ready.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;

use crate::watch_health::WatchHealth;

/// Shared state of the endpoint.
#[derive(Clone)]
pub struct Health {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    watches: WatchHealth,
}

impl Health {
    /// `watches` is where the controllers' watches report (`Metrics::watches`).
    pub fn new(registry: Registry, watches: WatchHealth) -> Self {
        Health {
            registry: Arc::new(registry),
            ready: Arc::new(AtomicBool::new(false)),
            watches,
        }
    }

    /// Marks the process ready (client built, election running or controllers started).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &h.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(h): State<Health>) -> Response {
    if !h.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response();
    }
    let unhealthy = h.watches.unhealthy();
    if unhealthy.is_empty() {
        return (StatusCode::OK, "ready").into_response();
    }
    let mut body = String::from("unhealthy watches:\n");
    for w in unhealthy {
        let problem = w.problem.unwrap_or_default();
        body.push_str(&format!("  {}: {problem}\n", w.name));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use futures::{stream, StreamExt};
    use http::Request;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{core::Status, runtime::watcher};
    use tower::ServiceExt;

    use super::*;
    use crate::watch_health::observe;

    async fn readyz_of(health: &Health) -> (StatusCode, String) {
        let req = Request::get("/readyz")
            .body(Body::empty())
            .expect("request");
        let res = router(health.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn health() -> (Health, WatchHealth) {
        let watches = WatchHealth::default();
        (Health::new(Registry::default(), watches.clone()), watches)
    }

    #[tokio::test]
    async fn not_ready_until_the_process_says_so() {
        let (h, _) = health();
        assert_eq!(readyz_of(&h).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_standby_without_watches_is_ready() {
        let (h, _) = health();
        h.set_ready(true);
        assert_eq!(readyz_of(&h).await, (StatusCode::OK, "ready".to_string()));
    }

    #[tokio::test]
    async fn a_leader_is_ready_when_every_watch_is_healthy() {
        let (h, watches) = health();
        h.set_ready(true);
        let listed: Vec<watcher::Result<watcher::Event<ConfigMap>>> =
            vec![Ok(watcher::Event::Init), Ok(watcher::Event::InitDone)];
        let forbidden = watcher::Error::InitialListFailed(kube::Error::Api(
            Status::failure("nodes is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        ));
        let failing_then_listed: Vec<watcher::Result<watcher::Event<ConfigMap>>> = vec![
            Ok(watcher::Event::Init),
            Err(forbidden),
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitDone),
        ];
        let mut apps = Box::pin(observe(stream::iter(listed), watches.clone(), "apps"));
        let mut nodes = Box::pin(observe(
            stream::iter(failing_then_listed),
            watches.clone(),
            "nodes",
        ));

        let (code, body) = readyz_of(&h).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("apps: initial list not complete"), "{body}");

        while apps.next().await.is_some() {}
        nodes.next().await;
        nodes.next().await;
        let (code, body) = readyz_of(&h).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(
            body,
            "unhealthy watches:\n  nodes: failing: list Forbidden (403): nodes is forbidden\n"
        );

        while nodes.next().await.is_some() {}
        assert_eq!(readyz_of(&h).await, (StatusCode::OK, "ready".to_string()));

        h.set_ready(false);
        assert_eq!(readyz_of(&h).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
