//! Many nodes (three: the local cluster's `up.sh --nodes 3`, or kind with two workers): a
//! bounded rollout over real kubelets, wasm pods only on provisioned nodes, a broken node that
//! holds up no other, a node opted out under load with no failed request, and a node that
//! disappears in the middle of its install. "home" is the node under test (the local cluster's
//! node 1, this host); "b" and "c" are the other two, by name.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{ListParams, WatchEvent, WatchParams},
    Api, ResourceExt,
};
use wasmkube_operator::crd::WasmApp;
use wasmkube_operator::names::{labels, runtime_state, RUNTIME_LABEL, WASM_NODE};

use super::faults::{start_load, stop_load};
use super::serving::{apply, cluster_ip, get, ready_replicas, wasm_app};
use super::CONTAINERD_CONFIG;
use crate::node;
use crate::wait::{within, Poll};
use crate::Cluster;

const NS: &str = "wasmkube-e2e-nodes";

/// The original containerd config of each node (sha256), recorded before its first opt-in.
static ORIGINAL: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// (home, b, c), or `None` (skipped loudly) when the cluster has fewer than three nodes; under
/// `WASMKUBE_REQUIRE_CLUSTER=1` (CI) too few nodes is a failure.
fn three_nodes(c: &Cluster) -> Result<Option<(Cluster, Cluster, Cluster)>> {
    let others = c.other_nodes();
    if others.len() < 2 {
        let why = format!(
            "the cluster has {} node(s), the many-node scenarios need 3 (tests/cluster/up.sh \
             --nodes 3, or kind with two workers)",
            c.nodes.len()
        );
        if std::env::var("WASMKUBE_REQUIRE_CLUSTER").as_deref() == Ok("1") {
            bail!("{why}");
        }
        println!("  SKIP: {why}");
        return Ok(None);
    }
    Ok(Some((c.clone(), c.on(&others[0]), c.on(&others[1]))))
}

fn opt(nodes: &[&Cluster], on: bool) -> Result<()> {
    let arg = if on {
        format!("{WASM_NODE}=true")
    } else {
        format!("{WASM_NODE}-")
    };
    let mut args = vec!["annotate", "node"];
    args.extend(nodes.iter().map(|n| n.node.as_str()));
    args.extend([arg.as_str(), "--overwrite"]);
    nodes[0].kubectl(&args)?;
    Ok(())
}

/// Opts `n` out (if it is in) and waits until it carries nothing of wasmkube's.
async fn opted_out(n: &Cluster) -> Result<()> {
    if node::runtime(n).await?.0.is_some() {
        opt(&[n], false)?;
    }
    node::wait_clean(n, Duration::from_secs(240)).await
}

fn record_original(n: &Cluster) -> Result<()> {
    let digest = n.node_file_digest(CONTAINERD_CONFIG)?;
    ORIGINAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(n.node.clone())
        .or_insert(digest);
    Ok(())
}

/// The node's containerd config is the one it had before wasmkube, byte for byte.
fn config_is_original(n: &Cluster) -> Result<()> {
    let now = n.node_file_digest(CONTAINERD_CONFIG)?;
    let original = ORIGINAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&n.node)
        .cloned()
        .context("no original config recorded")?;
    ensure!(
        now == original,
        "node {}: {CONTAINERD_CONFIG} is {now}, it was {original} before wasmkube",
        n.node
    );
    Ok(())
}

/// One change of a node's state label: (seconds since the log started, node, state).
type Change = (f64, String, Option<String>);

/// Every change of any node's state label, from a watch started now.
struct StateLog {
    log: Arc<Mutex<Vec<Change>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StateLog {
    async fn start(c: &Cluster) -> Result<Self> {
        let api = Api::<Node>::all(c.client.clone());
        let list = api.list(&ListParams::default()).await?;
        let rv = list
            .metadata
            .resource_version
            .clone()
            .context("node list without resourceVersion")?;
        let started = Instant::now();
        let log: Vec<_> = list
            .items
            .iter()
            .map(|n| (0.0, n.name_any(), n.labels().get(RUNTIME_LABEL).cloned()))
            .collect();
        let log = Arc::new(Mutex::new(log));
        let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
        let into = log.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                if let WatchEvent::Added(n) | WatchEvent::Modified(n) = event {
                    let state = n.labels().get(RUNTIME_LABEL).cloned();
                    let name = n.name_any();
                    let mut log = into.lock().unwrap_or_else(|e| e.into_inner());
                    let last = log.iter().rev().find(|(_, m, _)| *m == name);
                    if last.map(|(_, _, s)| s) != Some(&state) {
                        log.push((started.elapsed().as_secs_f64(), name, state));
                    }
                }
            }
        });
        Ok(Self { log, task })
    }

    fn log(&self) -> Vec<Change> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The most nodes that were in `state` at one time, and the nodes that ever were.
    fn most_at_once(&self, state: &str) -> (usize, BTreeSet<String>) {
        let mut now: BTreeMap<String, Option<String>> = BTreeMap::new();
        let (mut most, mut ever) = (0, BTreeSet::new());
        for (_, node, s) in self.log() {
            if s.as_deref() == Some(state) {
                ever.insert(node.clone());
            }
            now.insert(node, s);
            most = most.max(now.values().filter(|s| s.as_deref() == Some(state)).count());
        }
        (most, ever)
    }
}

impl Drop for StateLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// SIGKILLs the leader operator's process on its node (no SIGTERM, no lease release: as an OOM
/// kill or a node's power loss would); returns the pod's name.
async fn sigkill_leader(c: &Cluster) -> Result<String> {
    // A container killed twice loses its first run's logs: keep them for the log check.
    super::install::save_operator_logs(c)?;
    let leader = super::install::leader(c)
        .await?
        .context("no operator holds the Lease")?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), super::install::NS);
    let node = pods
        .get(&leader)
        .await?
        .spec
        .and_then(|s| s.node_name)
        .context("the leader pod is not on a node")?;
    c.on(&node).node_sh(&format!(
        "cid=$(crictl ps -q --name '^operator$' --label io.kubernetes.pod.name={leader}) && \
         pid=$(crictl inspect -o go-template --template '{{{{.info.pid}}}}' \"$cid\") && \
         [ -n \"$pid\" ] && kill -KILL \"$pid\""
    ))?;
    Ok(leader)
}

/// The app's live pods: (name, node or "" while unscheduled, ready).
async fn app_pods(c: &Cluster, app: &str) -> Result<Vec<(String, String, bool)>> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let list = pods
        .list(&ListParams::default().labels(&format!("{}={app}", labels::INSTANCE)))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (p.name_any(), node, ready)
        })
        .collect())
}

/// Two nodes opted in at once under `--max-concurrent-installs 1` (the operator's default),
/// the leader SIGKILLed when the first install starts: the installs run one after the other
/// (never two nodes `pending` together) and both end `ready`. The third node, not opted in, never gets a wasm pod, even when the app asks for more
/// than the two nodes hold: the extra pods stay Pending with the scheduler's reason, which the
/// WasmApp's status repeats. The leader is SIGKILLed again right after that app is applied: the
/// next one converges, writing each child once.
pub async fn two_nodes_install_one_at_a_time(c: &Cluster) -> Result<()> {
    let Some((home, b, cc)) = three_nodes(c)? else {
        return Ok(());
    };
    opted_out(&home).await?;
    for n in [&home, &b, &cc] {
        record_original(n)?;
    }
    let states = StateLog::start(c).await?;
    opt(&[&b, &cc], true)?;
    // The leader SIGKILLed as soon as the first install starts: the next leader (the standby,
    // or the restarted container) must carry on from the nodes' labels without a second
    // install at once.
    within(
        "a node to start installing",
        Duration::from_secs(60),
        || async {
            let (_, ever) = states.most_at_once(runtime_state::PENDING);
            Ok(if ever.is_empty() {
                Poll::NotYet("no node pending yet".into())
            } else {
                Poll::Done(())
            })
        },
    )
    .await?;
    let killed = sigkill_leader(c).await?;
    println!("  SIGKILLed the leader {killed} mid-rollout");
    for n in [&b, &cc] {
        node::wait_state(n, runtime_state::READY, Duration::from_secs(240)).await?;
        let pods = node::installer_pods(n, "install").await?;
        let result = node::installer_result(pods.first().context("no install pod")?)?;
        ensure!(
            result["verified"] == true,
            "node {}: not verified: {result}",
            n.node
        );
    }
    let (most, ever) = states.most_at_once(runtime_state::PENDING);
    for (t, n, s) in states.log().iter().filter(|(t, _, _)| *t > 0.0) {
        println!("  {t:6.1} s  {n}: {}", s.as_deref().unwrap_or("-"));
    }
    ensure!(
        ever.contains(&b.node) && ever.contains(&cc.node),
        "both nodes must have installed (pending): {ever:?}"
    );
    ensure!(
        most == 1,
        "{most} nodes were installing at once under --max-concurrent-installs 1"
    );
    ensure!(
        node::runtime(&home).await?.0.is_none(),
        "node {} was not opted in but has a runtime state",
        home.node
    );

    // An app asking for more than the two nodes hold: 1.2 CPUs per pod, so each node (the
    // host's 2 CPUs) takes one.
    c.fresh_namespace(NS)?;
    let app = "spread";
    let manifest = wasm_app(
        NS,
        app,
        "hello-http",
        "  resources:\n    requests:\n      cpu: 1200m\n",
    )
    .replace("replicas: 1", "replicas: 4");
    super::install::operator_available(c, Duration::from_secs(120)).await?;
    let (ok, _, err) = apply(c, app, &manifest)?;
    ensure!(ok, "applying WasmApp {app}: {err}");
    // The leader SIGKILLed while it applies the app's children: the next one converges, and
    // every child is written once (its spec never changed after creation: generation 1).
    let killed = sigkill_leader(c).await?;
    println!("  SIGKILLed the leader {killed} mid-apply");
    ready_replicas(c, NS, app, 2).await?;
    let deployment = Api::<Deployment>::namespaced(c.client.clone(), NS)
        .get(app)
        .await?;
    ensure!(
        deployment.metadata.generation == Some(1),
        "the Deployment was written more than once: generation {:?}",
        deployment.metadata.generation
    );
    let replica_sets = c.kubectl(&["-n", NS, "get", "replicasets", "-o", "name"])?;
    ensure!(
        replica_sets.lines().count() == 1,
        "one ReplicaSet expected (no second rollout): {replica_sets}"
    );
    let wasm_apps: Api<WasmApp> = Api::namespaced(c.client.clone(), NS);
    let degraded = within(
        "the WasmApp to report its Pending pods",
        Duration::from_secs(90),
        || async {
            let status = wasm_apps.get(app).await?.status;
            let condition = status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
                .filter(|c| c.status == "True" && c.reason == "Unschedulable");
            Ok(match condition {
                Some(c) => Poll::Done(c.message.clone()),
                None => Poll::NotYet(format!("status {status:?}")),
            })
        },
    )
    .await?;
    println!("  WasmApp Degraded: Unschedulable: {degraded}");
    ensure!(
        degraded.contains("didn't match Pod's node affinity/selector")
            && degraded.contains("Insufficient cpu"),
        "the scheduler's reason should name the node that is not a wasm node and the full ones: \
         {degraded}"
    );
    // Held for a while: the pods stay where they are, and none ever reaches the third node.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods = app_pods(c, app).await?;
    let placed: BTreeSet<&str> = pods
        .iter()
        .filter(|(_, n, _)| !n.is_empty())
        .map(|(_, n, _)| n.as_str())
        .collect();
    let pending = pods.iter().filter(|(_, n, _)| n.is_empty()).count();
    println!("  pods on {placed:?}, {pending} Pending");
    ensure!(
        placed == BTreeSet::from([b.node.as_str(), cc.node.as_str()]),
        "the app's pods must run on the two wasm nodes, one each: {pods:?}"
    );
    ensure!(pending == 2, "2 pods should be Pending: {pods:?}");
    c.kubectl(&["-n", NS, "delete", "wasmapp", app, "--wait=true"])?;
    Ok(())
}

/// A node opted out while a 2-replica app serves through its Service under load: its pod is
/// evicted, the replacement starts on the other wasm node, and not one request fails (the
/// preStop pause keeps a leaving pod serving until every node's proxy has dropped it). The
/// node ends clean, its containerd config as it was.
pub async fn opt_out_under_load_fails_no_request(c: &Cluster) -> Result<()> {
    let Some((_, b, cc)) = three_nodes(c)? else {
        return Ok(());
    };
    c.fresh_namespace(NS)?;
    let app = "steady";
    let manifest = wasm_app(NS, app, "hello-http", "").replace("replicas: 1", "replicas: 2");
    let (ok, _, err) = apply(c, app, &manifest)?;
    ensure!(ok, "applying WasmApp {app}: {err}");
    ready_replicas(c, NS, app, 2).await?;
    let before = app_pods(c, app).await?;
    let nodes: BTreeSet<&str> = before.iter().map(|(_, n, _)| n.as_str()).collect();
    ensure!(
        nodes == BTreeSet::from([b.node.as_str(), cc.node.as_str()]),
        "the replicas should be spread over both wasm nodes: {before:?}"
    );
    let ip = cluster_ip(c, NS, app).await?;
    get(c, &ip, "/hello").await?;

    start_load(c, &ip)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    opt(&[&cc], false)?;
    let moved = async {
        node::wait_clean(&cc, Duration::from_secs(240)).await?;
        ready_replicas(c, NS, app, 2).await?;
        within(
            "both replicas on the remaining node",
            Duration::from_secs(60),
            || async {
                let pods = app_pods(c, app).await?;
                Ok(
                    if pods.len() == 2 && pods.iter().all(|(_, n, _)| *n == b.node) {
                        Poll::Done(pods)
                    } else {
                        Poll::NotYet(format!("{pods:?}"))
                    },
                )
            },
        )
        .await
    }
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (answered, failed) = stop_load(c).await?;
    let after = moved?;
    println!(
        "  node {} opted out and clean {:.1} s later; pods now {after:?}; {answered} requests \
         answered, {failed} failed",
        cc.node,
        started.elapsed().as_secs_f64()
    );
    ensure!(answered > 0, "no request was answered");
    ensure!(
        failed == 0,
        "{failed} of {} requests failed while the node was opted out",
        answered + failed
    );
    config_is_original(&cc)?;
    c.kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"])?;
    Ok(())
}

/// A node whose containerd config is broken ends `failed` with the parse error, and the node
/// opted in with it still becomes `ready`: a failure frees its rollout slot. Both are then
/// opted out clean (the broken node's config put back first).
pub async fn a_broken_node_holds_up_no_other(c: &Cluster) -> Result<()> {
    let Some((home, _, cc)) = three_nodes(c)? else {
        return Ok(());
    };
    let saved = format!("{CONTAINERD_CONFIG}.e2e-saved");
    cc.node_sh(&format!(
        "cp -p {CONTAINERD_CONFIG} {saved} && printf 'version = 2\\n[plugins\\nbroken = \\n' > {CONTAINERD_CONFIG}"
    ))?;
    let outcome = async {
        opt(&[&cc, &home], true)?;
        let reason = node::wait_failed(&cc, Duration::from_secs(180)).await?;
        ensure!(
            reason.starts_with("ParseError"),
            "node {}: reason {reason:?} does not name the parse error",
            cc.node
        );
        node::wait_state(&home, runtime_state::READY, Duration::from_secs(240)).await?;
        println!("  {} failed ({reason}), {} ready", cc.node, home.node);
        Ok(())
    }
    .await;
    cc.node_sh(&format!("mv -f {saved} {CONTAINERD_CONFIG}"))?;
    outcome?;
    opt(&[&cc, &home], false)?;
    for n in [&cc, &home] {
        node::wait_clean(n, Duration::from_secs(240)).await?;
        config_is_original(n)?;
    }
    Ok(())
}

/// A node switched off in the middle of its install (its installer waiting on the host lock,
/// so holding the only rollout slot): the node opted in after it waits `queued`, and once the
/// node and its Node object are gone the slot is freed and that node installs.
pub async fn a_node_removed_mid_install_frees_its_slot(c: &Cluster) -> Result<()> {
    let Some((home, _, cc)) = three_nodes(c)? else {
        return Ok(());
    };
    node::hold_installer_lock(&cc)?;
    opt(&[&cc], true)?;
    within(
        "the install pod to run on the node and wait for the lock",
        Duration::from_secs(120),
        || async {
            let pods = node::installer_pods(&cc, "install").await?;
            let running = pods.iter().any(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.init_container_statuses.as_ref())
                    .is_some_and(|s| {
                        s.iter()
                            .any(|s| s.state.as_ref().is_some_and(|s| s.running.is_some()))
                    })
            });
            let state = node::runtime(&cc).await?.0;
            Ok(
                if running && state.as_deref() == Some(runtime_state::PENDING) {
                    Poll::Done(())
                } else {
                    Poll::NotYet(format!("state {state:?}, installer running: {running}"))
                },
            )
        },
    )
    .await?;
    opt(&[&home], true)?;
    node::wait_state(&home, runtime_state::QUEUED, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = node::runtime(&home).await?.0;
    ensure!(
        state.as_deref() == Some(runtime_state::QUEUED),
        "node {} left the queue while the slot was held: {state:?}",
        home.node
    );
    let removed = Instant::now();
    cc.remove_node()?;
    node::wait_state(&home, runtime_state::READY, Duration::from_secs(180)).await?;
    println!(
        "  node {} removed mid-install; {} ready {:.1} s later",
        cc.node,
        home.node,
        removed.elapsed().as_secs_f64()
    );
    let pods = node::installer_pods(&home, "install").await?;
    let result = node::installer_result(pods.first().context("no install pod")?)?;
    ensure!(result["verified"] == true, "not verified: {result}");
    Ok(())
}
