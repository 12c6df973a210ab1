//! Operator benchmark: reconcile CPU per WasmApp and RSS with 1,000 WasmApps, against an
//! in-process API server that answers like Kubernetes (no network, no apiserver).
//!
//! Run: `cargo bench -p wasmkube-operator --bench operator` (add `-- --apps N` for another size).
//! Each figure comes with a baseline measured in the same run, and the ratio to it:
//! - CPU: the same apps through the builders + JSON encoding only (no client, no HTTP), i.e. the
//!   work any implementation must do; the ratio is the cost of the kube client path on top.
//! - RSS: the process before the apps were created; the delta is what 1,000 apps cost.
//!
//! The API server answers a GET with 404 (no child exists before the first reconcile); after
//! the first round the child stores are fed as the controller's metadata watches would, so the
//! steady state reads ownership from them. Requests per app are counted by method.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use http::{Method, Request, Response, StatusCode};
use kube::{
    client::Body,
    core::PartialObjectMetaExt,
    runtime::{
        events::Reporter,
        reflector::{self, Store},
        watcher,
    },
    Client,
};
use serde_json::{json, Value};
use wasmkube_operator::{
    app_controller::{reconcile, Context},
    builders::app::build,
    crd::{WasmApp, WasmAppSpec},
    events::Recorder,
    metrics::Metrics,
};

fn proc_status(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the comm field: state is 0, utime 11, stime 12; USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Requests the API server answered: GET, PATCH, POST (events), DELETE, other.
static REQUESTS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];

fn requests() -> [usize; 5] {
    REQUESTS.each_ref().map(|c| c.load(Ordering::Relaxed))
}

/// `after - before` per app, as `GET x, PATCH y, POST z, DELETE w`.
fn per_app(before: [usize; 5], after: [usize; 5], apps: usize) -> String {
    let names = ["GET", "PATCH", "POST", "DELETE", "other"];
    let per = |i: usize| (after[i] - before[i]) as f64 / apps.max(1) as f64;
    (0..5)
        .filter(|&i| after[i] > before[i])
        .map(|i| format!("{} {:.2}", names[i], per(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The API server: answers each request like Kubernetes would, instantly.
async fn api(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let slot = match method {
        Method::GET => 0,
        Method::PATCH => 1,
        Method::POST => 2,
        Method::DELETE => 3,
        _ => 4,
    };
    REQUESTS[slot].fetch_add(1, Ordering::Relaxed);
    if method == Method::GET {
        // No child exists yet: the ownership check's metadata GET finds nothing.
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found"});
        let mut res = Response::new(Body::from(serde_json::to_vec(&status).unwrap_or_default()));
        *res.status_mut() = StatusCode::NOT_FOUND;
        return Ok(res);
    }
    let path = req.uri().path().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut reply = body;
    let parts: Vec<&str> = path.split('/').collect();
    if method == Method::PATCH && path.contains("/deployments/") {
        let replicas = reply["spec"]["replicas"].as_i64().unwrap_or(1);
        reply["metadata"]["generation"] = json!(1);
        reply["status"] = json!({"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas});
    } else if method == Method::PATCH && path.ends_with("/status") {
        let n = parts.len();
        reply["metadata"] = json!({"name": parts[n - 2], "namespace": parts[n - 4]});
        // A real server returns the whole object; the spec's size does not matter here.
        reply["spec"] = json!({"image": "docker.io/wasmkube/hello-http:latest"});
    } else if method == Method::DELETE {
        reply = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
    }
    let bytes = serde_json::to_vec(&reply).unwrap_or_default();
    Ok(Response::new(Body::from(bytes)))
}

fn apps(n: usize) -> Vec<WasmApp> {
    (0..n)
        .map(|i| {
            let mut app = WasmApp::new(
                &format!("app-{i}"),
                WasmAppSpec {
                    image: format!("docker.io/wasmkube/hello-http:{}", i % 7),
                    replicas: Some((i % 3) as i32 + 1),
                    args: vec!["--greeting".into(), format!("hello {i}")],
                    ..WasmAppSpec::default()
                },
            );
            app.metadata.namespace = Some(format!("team-{}", i % 20));
            app.metadata.uid = Some(format!("uid-{i}"));
            app.metadata.generation = Some(1);
            app.metadata.resource_version = Some(i.to_string());
            app
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip_while(|a| a != "--apps")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rss_baseline = proc_status("VmRSS:");

    let client = Client::new(tower::service_fn(api), "default");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "wasmkube-operator".into(),
            instance: None,
        },
    );
    let ctx = Arc::new(Context::new(client, recorder, Metrics::default()));

    // The controller's cache: every WasmApp in a reflector store, as in production.
    let (store, mut writer): (Store<WasmApp>, _) = reflector::store();
    for app in apps(n) {
        writer.apply_watcher_event(&watcher::Event::Apply(app));
    }

    // Baseline: the builders and the JSON encoding of every child, no client.
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let rounds = 50;
    let mut bytes = 0usize;
    for _ in 0..rounds {
        for app in store.state() {
            let objs = build(&app)?;
            bytes += serde_json::to_vec(&objs.deployment)?.len()
                + serde_json::to_vec(&objs.service)?.len();
        }
    }
    let base_cpu = (cpu_seconds() - c0) / (rounds * n) as f64;
    let base_wall = t0.elapsed().as_secs_f64() / (rounds * n) as f64;

    // First reconcile of each app: ownership GETs, 2 applies + status + Created event.
    let r1 = requests();
    let (c1, t1) = (cpu_seconds(), Instant::now());
    let mut reconciled = Vec::with_capacity(n);
    for app in store.state() {
        reconcile(app.clone(), ctx.clone()).await?;
        reconciled.push(app);
    }
    let first_cpu = (cpu_seconds() - c1) / n as f64;
    let first_wall = t1.elapsed().as_secs_f64() / n as f64;
    let first_requests = per_app(r1, requests(), n);

    // The children now exist: feed the stores as the controller's metadata watches would
    // (what `triggers::children` keeps: no managed fields, no annotations).
    let mut writers = ctx
        .take_child_writers()
        .ok_or_else(|| anyhow::anyhow!("the child stores' writers were taken"))?;
    for app in store.state() {
        let objs = build(&app)?;
        let meta = |mut m: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.uid = Some(format!(
                "{}-child",
                app.metadata.uid.clone().unwrap_or_default()
            ));
            m.managed_fields = None;
            m.annotations = None;
            m
        };
        writers
            .deployments
            .apply_watcher_event(&watcher::Event::Apply(
                meta(objs.deployment.metadata).into_response_partial(),
            ));
        if let Some(svc) = objs.service {
            writers.services.apply_watcher_event(&watcher::Event::Apply(
                meta(svc.metadata).into_response_partial(),
            ));
        }
        if let Some(hpa) = objs.autoscaler {
            writers
                .autoscalers
                .apply_watcher_event(&watcher::Event::Apply(
                    meta(hpa.metadata).into_response_partial(),
                ));
        }
    }

    // Steady state: the status already says what the Deployment says; 2 applies, nothing else.
    let steady_apps: Vec<Arc<WasmApp>> = store
        .state()
        .into_iter()
        .map(|a| {
            let mut a = (*a).clone();
            let d = serde_json::to_value(wasmkube_operator::builders::app::deployment(&a))
                .unwrap_or_default();
            let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
            let mut dep: k8s_openapi::api::apps::v1::Deployment =
                serde_json::from_value(d).unwrap_or_default();
            dep.metadata.generation = Some(1);
            dep.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
                observed_generation: Some(1),
                replicas: Some(replicas),
                updated_replicas: Some(replicas),
                ready_replicas: Some(replicas),
                available_replicas: Some(replicas),
                ..Default::default()
            });
            let children = wasmkube_operator::status::Children {
                service_name: a.metadata.name.clone(),
                autoscaler_name: None,
                url: wasmkube_operator::builders::app::service_url(&a),
                selector: Some(wasmkube_operator::builders::app::selector_string(&a)),
            };
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            );
            a.status = Some(wasmkube_operator::status::from_deployment(
                &a, &dep, children, &now,
            ));
            Arc::new(a)
        })
        .collect();
    let r2 = requests();
    let (c2, t2) = (cpu_seconds(), Instant::now());
    let steady_rounds = 3;
    for _ in 0..steady_rounds {
        for app in &steady_apps {
            reconcile(app.clone(), ctx.clone()).await?;
        }
    }
    let steady_cpu = (cpu_seconds() - c2) / (steady_rounds * n) as f64;
    let steady_wall = t2.elapsed().as_secs_f64() / (steady_rounds * n) as f64;
    let steady_requests = per_app(r2, requests(), steady_rounds * n);
    drop(steady_apps);

    let rss = proc_status("VmRSS:");
    let hwm = proc_status("VmHWM:");
    let ms = |s: f64| s * 1e3;
    println!(
        "wasmkube-operator bench: {n} WasmApps, in-process API server (debug symbols: {})",
        cfg!(debug_assertions)
    );
    println!("  baseline (build + encode children, no client): cpu {:.3} ms/app, wall {:.3} ms/app ({} bytes)", ms(base_cpu), ms(base_wall), bytes / rounds);
    println!("  first reconcile:  cpu {:.3} ms/app, wall {:.3} ms/app, ratio {:.1}x baseline; requests/app: {first_requests}", ms(first_cpu), ms(first_wall), first_cpu / base_cpu.max(1e-9));
    println!("  steady reconcile: cpu {:.3} ms/app, wall {:.3} ms/app, ratio {:.1}x baseline; requests/app: {steady_requests}", ms(steady_cpu), ms(steady_wall), steady_cpu / base_cpu.max(1e-9));
    println!("  RSS: baseline {:.1} MB, with {n} apps cached + reconciled {:.1} MB (delta {:.1} MB, ratio {:.2}x), peak {:.1} MB",
        rss_baseline as f64 / 1024.0, rss as f64 / 1024.0, (rss.saturating_sub(rss_baseline)) as f64 / 1024.0,
        rss as f64 / rss_baseline.max(1) as f64, hwm as f64 / 1024.0);
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!(
        "  goal reconcile CPU <= 1 ms/app: {} (first {:.3} ms, steady {:.3} ms)",
        verdict(steady_cpu <= 1e-3 && first_cpu <= 1e-3),
        ms(first_cpu),
        ms(steady_cpu)
    );
    println!(
        "  goal RSS <= 30 MB: {} (peak {:.1} MB)",
        verdict(hwm <= 30 * 1024),
        hwm as f64 / 1024.0
    );
    drop(reconciled);
    Ok(())
}
