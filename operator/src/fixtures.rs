//! Test helpers: an `ApiServerVerifier` over a `tower-test` mock that checks, request by
//! request, the method, path, query and body a reconcile sends, and answers like the API server.

use std::{collections::BTreeMap, time::Duration};

use http::{Method, Request, Response, StatusCode};
use kube::{client::Body, Client};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::names::FIELD_MANAGER;

type BodyCheck = Box<dyn FnOnce(&Value) + Send>;
type ReplyFn = Box<dyn FnOnce(&Value) -> Value + Send>;

/// One request the reconcile must send, and the answer it gets.
pub struct Step {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    content_type: Option<&'static str>,
    check: Option<BodyCheck>,
    status: StatusCode,
    reply: Reply,
    /// `path` is a prefix (generated names).
    path_prefix: bool,
}

enum Reply {
    /// Send the request body back (what the API server does for a create, roughly).
    Echo,
    Json(Value),
    With(ReplyFn),
}

impl Step {
    fn new(method: Method, path: &str) -> Self {
        Step {
            method,
            path: path.to_string(),
            query: BTreeMap::new(),
            content_type: None,
            check: None,
            status: StatusCode::OK,
            reply: Reply::Echo,
            path_prefix: false,
        }
    }

    /// A server-side apply: `PATCH path?fieldManager=wasmkube-operator&force=true`.
    pub fn apply(path: &str) -> Self {
        let mut s = Step::new(Method::PATCH, path);
        s.query = BTreeMap::from([
            ("fieldManager".to_string(), FIELD_MANAGER.to_string()),
            ("force".to_string(), "true".to_string()),
        ]);
        s.content_type = Some("application/apply-patch+yaml");
        s
    }

    /// A server-side apply under another field manager (`force` unset).
    pub fn apply_as(manager: &str, path: &str) -> Self {
        let mut s = Step::new(Method::PATCH, path);
        s.query = BTreeMap::from([("fieldManager".to_string(), manager.to_string())]);
        s.content_type = Some("application/apply-patch+yaml");
        s
    }

    /// A GET of `path`.
    pub fn get(path: &str) -> Self {
        Step::new(Method::GET, path)
    }

    /// A JSON merge patch of `path`.
    pub fn merge_patch(path: &str) -> Self {
        let mut s = Step::new(Method::PATCH, path);
        s.content_type = Some("application/merge-patch+json");
        s
    }

    /// A POST to `path` (a create, or a subresource such as `eviction`).
    pub fn post(path: &str) -> Self {
        Step::new(Method::POST, path)
    }

    /// Accepts any path that starts with the given one (objects with generated names).
    pub fn under(mut self) -> Self {
        self.path_prefix = true;
        self
    }

    /// Expects this query parameter (decoded).
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.insert(key.to_string(), value.to_string());
        self
    }

    /// A delete of `path` (background propagation).
    pub fn delete(path: &str) -> Self {
        Step::new(Method::DELETE, path).body(|b| {
            assert_eq!(b["propagationPolicy"], "Background", "delete propagation");
        })
    }

    /// An Event (events.k8s.io/v1) in `namespace` with this type and reason.
    pub fn event(namespace: &str, type_: &'static str, reason: &'static str) -> Self {
        Step::new(
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
        )
        .body(move |b| {
            assert_eq!(b["reason"], reason, "event reason in {b}");
            assert_eq!(b["type"], type_, "event type in {b}");
            assert_eq!(b["reportingController"], FIELD_MANAGER);
        })
    }

    /// Checks the JSON body, after any check the step already makes (an event's reason and
    /// type, a delete's propagation): a further check adds to those, never replaces them.
    pub fn body(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.check = Some(match self.check.take() {
            Some(first) => Box::new(move |b: &Value| {
                first(b);
                check(b);
            }),
            None => Box::new(check),
        });
        self
    }

    /// Answers with this object.
    pub fn reply(mut self, v: Value) -> Self {
        self.reply = Reply::Json(v);
        self
    }

    /// Answers with an object computed from the request body.
    pub fn reply_with(mut self, f: impl FnOnce(&Value) -> Value + Send + 'static) -> Self {
        self.reply = Reply::With(Box::new(f));
        self
    }

    /// Answers 404 NotFound.
    pub fn not_found(mut self) -> Self {
        self.status = StatusCode::NOT_FOUND;
        self.reply = Reply::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found"
        }));
        self
    }

    /// Answers 403 as the API server's NamespaceLifecycle admission does for a new object in a
    /// namespace being deleted (cause `NamespaceTerminating`).
    pub fn namespace_terminating(mut self, namespace: &str) -> Self {
        self.status = StatusCode::FORBIDDEN;
        self.reply = Reply::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "Forbidden", "code": 403,
            "message": format!("deployments.apps \"hello\" is forbidden: unable to create new \
                content in namespace {namespace} because it is being terminated"),
            "details": {"name": "hello", "group": "apps", "kind": "deployments", "causes": [{
                "reason": "NamespaceTerminating", "field": "metadata.namespace",
                "message": format!("namespace {namespace} is being terminated"),
            }]}
        }));
        self
    }

    /// Answers with an error status (e.g. 500, 409).
    pub fn fail(mut self, code: u16, reason: &str) -> Self {
        self.status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.reply = Reply::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "code": code, "message": reason
        }));
        self
    }
}

/// `%XX` and `+` decoded (query values such as field selectors arrive encoded).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

/// The mock API server's side of the connection.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

/// A client wired to a fresh verifier.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

impl ApiServerVerifier {
    /// Serves `steps` in order, asserting each request; then asserts no request follows (which
    /// resolves once every client clone is dropped).
    pub fn run(self, steps: Vec<Step>) -> JoinHandle<Vec<Value>> {
        let mut handle = self.0;
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for (i, step) in steps.into_iter().enumerate() {
                let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                    panic!(
                        "step {i}: expected {} {}, got nothing",
                        step.method, step.path
                    )
                });
                let uri = request.uri().clone();
                let what = format!("step {i}: {} {uri}", request.method());
                assert_eq!(request.method(), step.method, "{what}");
                if step.path_prefix {
                    assert!(
                        uri.path().starts_with(&step.path),
                        "{what}: under {}",
                        step.path
                    );
                } else {
                    assert_eq!(uri.path(), step.path, "{what}");
                }
                assert_eq!(parse_query(uri.query()), step.query, "{what}: query");
                if let Some(ct) = step.content_type {
                    assert_eq!(
                        request
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok()),
                        Some(ct),
                        "{what}: content type"
                    );
                }
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"))
                };
                if let Some(check) = step.check {
                    check(&body);
                }
                let reply = match step.reply {
                    Reply::Echo => body.clone(),
                    Reply::Json(v) => v,
                    Reply::With(f) => f(&body),
                };
                seen.push(body);
                send.send_response(
                    Response::builder()
                        .status(step.status)
                        .body(Body::from(serde_json::to_vec(&reply).expect("reply json")))
                        .expect("response"),
                );
            }
            if let Some((request, _)) = handle.next_request().await {
                panic!(
                    "unexpected extra request: {} {}",
                    request.method(),
                    request.uri()
                );
            }
            seen
        })
    }
}

/// Waits for the verifier (the reconcile's client must be dropped first).
pub async fn finish(task: JoinHandle<Vec<Value>>) -> Vec<Value> {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("verifier timed out: a client clone is still alive or a step was not requested")
        .expect("verifier panicked")
}
