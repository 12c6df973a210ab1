//! The cluster under test: a kube client, `kubectl` as a user runs it, and a shell on the node.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, ResourceExt};

/// Everything a scenario talks to.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The repository root (for `manifests/`, `examples/`).
    pub repo: PathBuf,
    /// The node under test (the first node, or `WASMKUBE_E2E_NODE`).
    pub node: String,
    /// Every node when the suite connected, by name; the many-node scenarios use the others.
    pub nodes: Vec<String>,
    /// The node whose shell is this host's (the local cluster's node 1), if any.
    home: String,
    kubectl: PathBuf,
    node_exec: Vec<String>,
    /// Logs of operator containers kept before their pods were replaced, by
    /// `pod/container container-id` (see `scenarios::install::save_operator_logs`).
    pub saved_logs: Arc<Mutex<BTreeMap<String, String>>>,
    /// Spans of time (UTC, `YYYY-MM-DDTHH:MM:SS`, from and to) in which the API server was
    /// restarting: its authorizer answers 403 until its RBAC cache is filled, so an operator log
    /// line about a 403 in one of them is not a missing permission.
    pub api_restarts: Arc<Mutex<Vec<(String, String)>>>,
}

/// Why the suite cannot run here.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl Cluster {
    /// Connects through `KUBECONFIG`; `Err(Unavailable)` when there is no cluster to test.
    pub async fn connect() -> std::result::Result<Cluster, Unavailable> {
        if std::env::var_os("KUBECONFIG").is_none() {
            return Err(Unavailable(
                "KUBECONFIG is not set (bring a cluster up with tests/cluster/up.sh)".into(),
            ));
        }
        let client = Client::try_default()
            .await
            .map_err(|e| Unavailable(format!("cannot build a client from KUBECONFIG: {e}")))?;
        let nodes: Api<Node> = Api::all(client.clone());
        let list = nodes
            .list(&Default::default())
            .await
            .map_err(|e| Unavailable(format!("the cluster does not answer: {e}")))?;
        let node = match std::env::var("WASMKUBE_E2E_NODE") {
            Ok(n) => n,
            Err(_) => list
                .items
                .first()
                .map(|n| n.name_any())
                .ok_or_else(|| Unavailable("the cluster has no node".into()))?,
        };
        let mut nodes: Vec<String> = list.items.iter().map(|n| n.name_any()).collect();
        nodes.sort();
        let kubectl = std::env::var_os("KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("kubectl"));
        let node_exec = std::env::var("WASMKUBE_E2E_NODE_EXEC")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let repo = repo.canonicalize().unwrap_or(repo);
        Ok(Cluster {
            client,
            repo,
            home: node.clone(),
            node,
            nodes,
            kubectl,
            node_exec,
            saved_logs: Arc::default(),
            api_restarts: Arc::default(),
        })
    }

    /// The `kubectl` binary the suite uses.
    pub fn kubectl_path(&self) -> &std::path::Path {
        &self.kubectl
    }

    /// Runs `kubectl ARGS` in the repository root; returns stdout, fails with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_output(args)?;
        if !out.0 {
            bail!("kubectl {} failed: {}", args.join(" "), out.2.trim());
        }
        Ok(out.1)
    }

    /// Runs `kubectl ARGS`: (success, stdout, stderr), for commands expected to fail.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(&self.kubectl)
            .args(args)
            .current_dir(&self.repo)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", self.kubectl.display()))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Namespace `ns`, empty: deleted first (with all it holds, if an earlier run left it), then
    /// created.
    pub fn fresh_namespace(&self, ns: &str) -> Result<()> {
        self.kubectl(&[
            "delete",
            "namespace",
            ns,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ])?;
        self.kubectl(&["create", "namespace", ns])?;
        Ok(())
    }

    /// The same cluster with `node` as the node under test: every helper that acts on "the
    /// node" (its state, its shell, its installer pods) acts on that one.
    pub fn on(&self, node: &str) -> Cluster {
        Cluster {
            node: node.to_string(),
            ..self.clone()
        }
    }

    /// The nodes other than the one under test, by name.
    pub fn other_nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| **n != self.node)
            .cloned()
            .collect()
    }

    /// Runs `sh -c SCRIPT` on the node (as root); returns stdout, fails with stderr.
    pub fn node_sh(&self, script: &str) -> Result<String> {
        // `WASMKUBE_E2E_NODE_EXEC` (kind: `docker exec -i {node}`), `{node}` replaced by the
        // node's name. Else the local cluster: node 1 is this host, the extra nodes of
        // `up.sh --nodes N` are entered with `tests/cluster/node.sh exec NAME`.
        let mut cmd = match self.node_exec.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program.replace("{node}", &self.node));
                c.args(args.iter().map(|a| a.replace("{node}", &self.node)))
                    .arg("sh");
                c
            }
            None if self.node == self.home => Command::new("sh"),
            None => {
                let mut c = Command::new(self.repo.join("tests/cluster/node.sh"));
                c.args(["exec", &self.node, "sh"]);
                c
            }
        };
        let out = cmd
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .context("cannot run a shell on the node")?;
        if !out.status.success() {
            bail!(
                "on node {}: `{script}` failed ({}): {}",
                self.node,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Takes the node out of the cluster as a machine that is switched off: its kubelet,
    /// containerd and everything it ran stop, and its Node object is deleted.
    /// `WASMKUBE_E2E_NODE_REMOVE` (kind: `docker rm -f {node}`), else the local cluster's
    /// `tests/cluster/node.sh down NAME`.
    pub fn remove_node(&self) -> Result<()> {
        let out = match std::env::var("WASMKUBE_E2E_NODE_REMOVE") {
            Ok(template) => Command::new("sh")
                .args(["-c", &template.replace("{node}", &self.node)])
                .output(),
            Err(_) => Command::new(self.repo.join("tests/cluster/node.sh"))
                .args(["down", &self.node])
                .output(),
        }
        .context("cannot run the node removal")?;
        if !out.status.success() {
            bail!(
                "removing node {} failed ({}): {}",
                self.node,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.kubectl(&["delete", "node", &self.node, "--ignore-not-found"])?;
        Ok(())
    }

    /// sha256 of a file on the node, or `absent`.
    pub fn node_file_digest(&self, path: &str) -> Result<String> {
        let out = self.node_sh(&format!(
            "if [ -e '{path}' ]; then sha256sum '{path}' | cut -d' ' -f1; else echo absent; fi"
        ))?;
        Ok(out.trim().to_string())
    }

    /// An HTTP GET from the node (where Service ClusterIPs are routed): the response body.
    pub fn http_get_from_node(&self, url: &str) -> Result<String> {
        self.node_sh(&format!("curl -fsS --max-time 5 '{url}'"))
    }
}
