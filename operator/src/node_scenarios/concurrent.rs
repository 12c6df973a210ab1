//! Reconciles of different nodes at the same time: the last rollout slot is never taken twice,
//! and a node that drains (or reports its install) does not wait for another node's admission.
//!
//! The mock API server here answers each request on its own task, in any order, so that two
//! reconciles really overlap; each scenario then asserts every request it saw (method, path,
//! query, body).

use std::{collections::BTreeMap, future::Future, pin::Pin, time::Duration};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::Value;
use tokio::{sync::Notify, task::JoinHandle};
use tower_test::mock;

use super::*;
use crate::{
    fixtures::parse_query,
    names::{FIELD_MANAGER, RUNTIME_LABEL},
};

/// One request as the mock API server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    body: Value,
}

/// What the answer to a request waits for before it is sent.
type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A client on a mock API server that answers every request on its own task, after `wait`
/// says so, like the API server would (see [`reply`]). The task resolves to every request in
/// arrival order once the client and its clones are gone.
fn concurrent_server(
    wait: impl Fn(&Seen) -> Option<Wait> + Send + 'static,
) -> (Client, JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut answers = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let request = Seen {
                method: parts.method,
                path: parts.uri.path().to_string(),
                query: parse_query(parts.uri.query()),
                body: if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("JSON body")
                },
            };
            let hold = wait(&request);
            let answer = reply(&request);
            seen.push(request);
            answers.push(tokio::spawn(async move {
                if let Some(hold) = hold {
                    hold.await;
                }
                let body = serde_json::to_vec(&answer).expect("reply json");
                send.send_response(Response::new(Body::from(body)));
            }));
        }
        for answer in answers {
            answer.await.expect("answer task");
        }
        seen
    });
    (Client::new(service, "default"), task)
}

/// The API server's answer: the node for a node apply, no pods for a pod list, the Event
/// itself for an Event.
fn reply(request: &Seen) -> Value {
    match (request.method.as_str(), request.path.as_str()) {
        ("PATCH", path) if path.starts_with("/api/v1/nodes/") => json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": path.trim_start_matches("/api/v1/nodes/")}
        }),
        ("GET", "/api/v1/pods") => {
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
        }
        _ => request.body.clone(),
    }
}

/// Waits for the server task (every client clone must be dropped first).
async fn all_requests(task: JoinHandle<Vec<Seen>>) -> Vec<Seen> {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server timed out: a client clone is still alive")
        .expect("server panicked")
}

/// Asserts `r` is our server-side apply of `node`.
fn assert_apply(r: &Seen, node: &str) {
    assert_eq!(r.method, Method::PATCH, "{r:?}");
    assert_eq!(r.path, format!("/api/v1/nodes/{node}"), "{r:?}");
    let query = BTreeMap::from([
        ("fieldManager".to_string(), FIELD_MANAGER.to_string()),
        ("force".to_string(), "true".to_string()),
    ]);
    assert_eq!(r.query, query, "{r:?}");
    assert_eq!(r.body["apiVersion"], "v1", "{r:?}");
    assert_eq!(r.body["kind"], "Node", "{r:?}");
    assert_eq!(r.body["metadata"]["name"], node, "{r:?}");
}

/// Asserts `r` is the apply that gives `node` the runtime label `state` and nothing else of
/// ours but `annotations` and a fresh `runtime-since`.
fn assert_enters(r: &Seen, node: &str, state: &str, annotations: Value) {
    assert_apply(r, node);
    let meta = &r.body["metadata"];
    assert_eq!(meta["labels"], json!({ RUNTIME_LABEL: state }), "{r:?}");
    let mut got = meta["annotations"].clone();
    let since = got
        .as_object_mut()
        .and_then(|m| m.remove(RUNTIME_SINCE_ANNOTATION))
        .and_then(|v| v.as_str().map(String::from))
        .expect("runtime-since written");
    let age = Timestamp::now().as_second() - since.parse::<Timestamp>().expect("ts").as_second();
    assert!((0..5).contains(&age), "runtime-since {since} is not now");
    let want = if annotations.is_null() {
        json!({})
    } else {
        annotations
    };
    assert_eq!(got, want, "{r:?}");
}

/// Asserts `r` is the Normal Event `reason` about `node`.
fn assert_event(r: &Seen, node: &str, reason: &str) {
    assert_eq!(r.method, Method::POST, "{r:?}");
    assert_eq!(
        r.path, "/apis/events.k8s.io/v1/namespaces/default/events",
        "{r:?}"
    );
    assert!(r.query.is_empty(), "{r:?}");
    assert_eq!(r.body["reason"], reason, "{r:?}");
    assert_eq!(r.body["type"], "Normal", "{r:?}");
    assert_eq!(r.body["reportingController"], FIELD_MANAGER, "{r:?}");
    assert_eq!(r.body["regarding"]["kind"], "Node", "{r:?}");
    assert_eq!(r.body["regarding"]["name"], node, "{r:?}");
}

/// Asserts `r` is the list of `node`'s pods a drain starts with.
fn assert_pod_list(r: &Seen, node: &str) {
    assert_eq!(r.method, Method::GET, "{r:?}");
    assert_eq!(r.path, "/api/v1/pods", "{r:?}");
    let query = BTreeMap::from([("fieldSelector".to_string(), format!("spec.nodeName={node}"))]);
    assert_eq!(r.query, query, "{r:?}");
}

/// A request held until the scenario lets it through, and the signal that it arrived.
#[derive(Clone, Default)]
struct Gate {
    arrived: Arc<Notify>,
    release: Arc<Notify>,
}

impl Gate {
    /// Holds this request (and notes that it came).
    fn hold(&self) -> Option<Wait> {
        self.arrived.notify_one();
        let release = self.release.clone();
        Some(Box::pin(async move { release.notified().await }))
    }
}

#[tokio::test]
async fn two_opt_ins_never_take_the_last_slot_together() {
    let a = named("worker-a", &[], &[WASM_NODE]);
    let b = named("worker-b", &[], &[WASM_NODE]);
    // Every write takes a while: had both decided before either wrote, both would install. The
    // node cache never shows either write, so only the overlay tells the second one.
    let (client, server) = concurrent_server(|r| {
        (r.method == Method::PATCH)
            .then(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))) as Wait)
    });
    let ctx = context(client, &World::new(a.clone()).others(vec![b.clone()]));
    let (ra, rb) = tokio::join!(
        reconcile(Arc::new(a), ctx.clone()),
        reconcile(Arc::new(b), ctx.clone())
    );
    ra.expect("reconcile a");
    rb.expect("reconcile b");
    drop(ctx);
    let seen = all_requests(server).await;
    assert_eq!(seen.len(), 4, "{seen:#?}");
    // Each node's requests, with their place among all: its apply, then its Event.
    let of = |node: &str| -> Vec<(usize, &Seen)> {
        let about = |r: &Seen| r.path.ends_with(node) || r.body["regarding"]["name"] == node;
        seen.iter().enumerate().filter(|(_, r)| about(r)).collect()
    };
    let (a, b) = (of("worker-a"), of("worker-b"));
    assert_eq!((a.len(), b.len()), (2, 2), "{seen:#?}");
    // Whoever wrote first took the slot; the other decided after that write.
    let ((first, installs), (second, queues)) = if a[0].0 < b[0].0 {
        (("worker-a", a), ("worker-b", b))
    } else {
        (("worker-b", b), ("worker-a", a))
    };
    assert_enters(installs[0].1, first, "pending", json!(null));
    assert_event(installs[1].1, first, reasons::PROVISIONING);
    assert_enters(queues[0].1, second, "queued", json!(null));
    assert_event(queues[1].1, second, reasons::QUEUED);
}

#[tokio::test]
async fn a_draining_node_does_not_hold_up_an_admission() {
    let since = "2026-11-25T10:00:00Z";
    let draining = named(
        "worker-d",
        &[("wasmkube.dev/runtime", "draining")],
        &[(RUNTIME_SINCE_ANNOTATION, since)],
    );
    let newcomer = named("worker-n", &[], &[WASM_NODE]);
    let gate = Gate::default();
    let (client, server) = concurrent_server({
        let gate = gate.clone();
        move |r| (r.path == "/api/v1/pods").then(|| gate.hold()).flatten()
    });
    let ctx = context(
        client,
        &World::new(draining.clone()).others(vec![newcomer.clone()]),
    );
    let drain = tokio::spawn(reconcile(Arc::new(draining), ctx.clone()));
    // The draining node is inside its pod list (an API call that can take its time)...
    gate.arrived.notified().await;
    // ...and the newcomer is admitted meanwhile.
    let admitted = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::new(newcomer), ctx.clone()),
    )
    .await
    .expect("the admission waited for another node's drain");
    assert_eq!(admitted.expect("reconcile"), Action::await_change());
    gate.release.notify_one();
    drain.await.expect("join").expect("reconcile");
    drop(ctx);
    let seen = all_requests(server).await;
    assert_eq!(seen.len(), 5, "{seen:#?}");
    assert_pod_list(&seen[0], "worker-d");
    assert_enters(&seen[1], "worker-n", "pending", json!(null));
    assert_event(&seen[2], "worker-n", reasons::PROVISIONING);
    assert_enters(&seen[3], "worker-d", "removing", json!(null));
    assert_event(&seen[4], "worker-d", reasons::REMOVING);
}

#[tokio::test]
async fn an_install_result_does_not_wait_for_an_admission_write() {
    // worker-1 installs (the slot is taken); worker-n opts in and its write hangs.
    let newcomer = named("worker-n", &[], &[WASM_NODE]);
    let gate = Gate::default();
    let (client, server) = concurrent_server({
        let gate = gate.clone();
        move |r| {
            (r.path == "/api/v1/nodes/worker-n")
                .then(|| gate.hold())
                .flatten()
        }
    });
    let world = World::new(pending(None))
        .others(vec![newcomer.clone()])
        .pods(vec![installed_pod()]);
    let ctx = context(client, &world);
    let admission = tokio::spawn(reconcile(Arc::new(newcomer), ctx.clone()));
    gate.arrived.notified().await;
    // worker-1's installer reported: it goes ready while worker-n's write is in flight.
    let ready = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::new(world.node.clone()), ctx.clone()),
    )
    .await
    .expect("the install result waited for another node's admission");
    assert_eq!(ready.expect("reconcile"), Action::await_change());
    gate.release.notify_one();
    let queued = admission.await.expect("join").expect("reconcile");
    assert_eq!(queued, Action::requeue(Duration::from_secs(30)));
    drop(ctx);
    let seen = all_requests(server).await;
    assert_eq!(seen.len(), 4, "{seen:#?}");
    assert_enters(&seen[0], "worker-n", "queued", json!(null));
    let ready = &seen[1];
    assert_apply(ready, "worker-1");
    assert_eq!(
        ready.body["metadata"],
        json!({
            "name": "worker-1",
            "labels": { RUNTIME_LABEL: "ready" },
            "annotations": {"wasmkube.dev/shim-version": SHIM}
        }),
        "{ready:?}"
    );
    assert_event(&seen[2], "worker-1", reasons::READY);
    assert_event(&seen[3], "worker-n", reasons::QUEUED);
}
