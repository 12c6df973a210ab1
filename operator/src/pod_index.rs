//! Installer pods indexed by node name, kept from the pod watch: a node's reconcile looks up
//! its own pods instead of scanning every installer pod in the cluster.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{runtime::watcher, ResourceExt};

type ByNode = HashMap<String, HashMap<String, Arc<Pod>>>;

#[derive(Debug, Default)]
struct Inner {
    live: ByNode,
    /// The relist in progress (swapped in on `InitDone`, like a reflector).
    buffer: Option<ByNode>,
}

/// Node name → that node's installer pods (by pod name).
#[derive(Clone, Debug, Default)]
pub struct PodIndex {
    inner: Arc<RwLock<Inner>>,
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

fn insert(map: &mut ByNode, pod: &Pod) {
    if let Some(node) = node_of(pod) {
        map.entry(node.to_string())
            .or_default()
            .insert(pod.name_any(), Arc::new(pod.clone()));
    }
}

fn remove(map: &mut ByNode, pod: &Pod) {
    let name = pod.name_any();
    // A pod's node never changes once bound, but an Apply may have seen it unbound: look
    // everywhere only when the node is unknown.
    match node_of(pod) {
        Some(node) => {
            if let Some(pods) = map.get_mut(node) {
                pods.remove(&name);
                if pods.is_empty() {
                    map.remove(node);
                }
            }
        }
        None => map.retain(|_, pods| {
            pods.remove(&name);
            !pods.is_empty()
        }),
    }
}

impl PodIndex {
    /// Applies one watch event.
    pub fn apply(&self, event: &watcher::Event<Pod>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(pod) => insert(&mut inner.live, pod),
            watcher::Event::Delete(pod) => remove(&mut inner.live, pod),
            watcher::Event::Init => inner.buffer = Some(ByNode::new()),
            watcher::Event::InitApply(pod) => {
                let buffer = inner.buffer.get_or_insert_with(ByNode::new);
                insert(buffer, pod);
            }
            watcher::Event::InitDone => {
                if let Some(buffer) = inner.buffer.take() {
                    inner.live = buffer;
                }
            }
        }
    }

    /// The installer pods on `node`.
    pub fn on_node(&self, node: &str) -> Vec<Arc<Pod>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .live
            .get(node)
            .map(|pods| pods.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of nodes with installer pods (for tests and metrics).
    pub fn nodes(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.live.len()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(name: &str, node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn names(index: &PodIndex, node: &str) -> Vec<String> {
        let mut v: Vec<String> = index.on_node(node).iter().map(|p| p.name_any()).collect();
        v.sort();
        v
    }

    #[test]
    fn follows_applies_deletes_and_relists() {
        let index = PodIndex::default();
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod("a", Some("n1"))));
        index.apply(&watcher::Event::InitApply(pod("b", Some("n2"))));
        // Not visible until the list is complete.
        assert_eq!(index.nodes(), 0);
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(&index, "n1"), ["a"]);
        assert_eq!(names(&index, "n2"), ["b"]);
        // Unbound pods are not on any node; binding puts them there.
        index.apply(&watcher::Event::Apply(pod("c", None)));
        assert_eq!(index.nodes(), 2);
        index.apply(&watcher::Event::Apply(pod("c", Some("n1"))));
        assert_eq!(names(&index, "n1"), ["a", "c"]);
        index.apply(&watcher::Event::Delete(pod("a", Some("n1"))));
        assert_eq!(names(&index, "n1"), ["c"]);
        index.apply(&watcher::Event::Delete(pod("c", None)));
        assert!(index.on_node("n1").is_empty());
        assert_eq!(index.nodes(), 1, "empty nodes are dropped");
        // A relist replaces everything (pods deleted while the watch was down vanish).
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod("d", Some("n3"))));
        index.apply(&watcher::Event::InitDone);
        assert!(index.on_node("n2").is_empty());
        assert_eq!(names(&index, "n3"), ["d"]);
    }
}
