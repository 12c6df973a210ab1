//! The opt-in rollout: slots, the queue, k3s/rke2 servers.

use super::*;

const K3S_SERVER_LABEL: (&str, &str) = ("node-role.kubernetes.io/control-plane", "true");
const K3S_ANNOTATION: (&str, &str) = ("k3s.io/node-args", "[\"server\"]");

/// An opted-in node queued since `since`.
fn queued(since: &str) -> PartialObjectMeta<Node> {
    node(
        &[("wasmkube.dev/runtime", "queued")],
        &[WASM_NODE, (RUNTIME_SINCE_ANNOTATION, since)],
    )
}

#[tokio::test]
async fn opt_in_queues_while_another_node_installs() {
    let me = opted_in();
    let busy = named("worker-2", &[("wasmkube.dev/runtime", "pending")], &[]);
    let action = run_in(World::new(me).others(vec![busy]), queued_steps()).await;
    // Slot releases wake it; a slow timer covers a missed one.
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(30)));
}

#[tokio::test]
async fn a_failed_node_keeps_its_slot() {
    let me = opted_in();
    let failed = named("worker-2", &[("wasmkube.dev/runtime", "failed")], &[]);
    run_in(World::new(me).others(vec![failed]), queued_steps()).await;
}

#[tokio::test]
async fn queued_node_starts_when_the_slot_frees() {
    let me = queued(ago(60));
    let done = named("worker-2", &[("wasmkube.dev/runtime", "ready")], &[]);
    run_in(World::new(me).others(vec![done]), pending_steps()).await;
}

#[tokio::test]
async fn queued_node_stays_behind_an_earlier_one() {
    let me = queued("2026-11-25T10:00:05Z");
    let earlier = named(
        "worker-9",
        &[("wasmkube.dev/runtime", "queued")],
        &[(RUNTIME_SINCE_ANNOTATION, "2026-11-25T10:00:01Z")],
    );
    // One slot free, and the earlier node has it: nothing to write.
    run_in(World::new(me).others(vec![earlier]), vec![]).await;
}

#[tokio::test]
async fn more_slots_admit_more_nodes() {
    let me = opted_in();
    let busy = named("worker-2", &[("wasmkube.dev/runtime", "pending")], &[]);
    let config = InstallerConfig {
        max_concurrent_installs: 2,
        ..InstallerConfig::default()
    };
    let world = World::new(me).others(vec![busy]).config(config);
    run_in(world, pending_steps()).await;
}

#[tokio::test]
async fn two_k3s_servers_never_install_together() {
    let me = node(&[K3S_SERVER_LABEL], &[WASM_NODE, K3S_ANNOTATION]);
    let other_server = named(
        "server-2",
        &[K3S_SERVER_LABEL, ("wasmkube.dev/runtime", "pending")],
        &[K3S_ANNOTATION],
    );
    let config = InstallerConfig {
        max_concurrent_installs: 10,
        ..InstallerConfig::default()
    };
    let world = World::new(me).others(vec![other_server]).config(config);
    run_in(world, queued_steps()).await;
}
