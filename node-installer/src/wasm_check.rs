//! Proof that the node runs wasm: a container whose entrypoint is a wasm module is started by
//! containerd through the `wasmkube` runtime and must exit with the code it is told to
//! (`WK_EXIT=42`). A node is never reported verified on its configuration alone.
//!
//! ## Where it runs, and why that proves the CRI path
//! The check runs through containerd's native API in its own containerd namespace
//! ([`NAMESPACE`], `wasmkube-check`), not as a CRI pod in `k8s.io`: the kubelet owns `k8s.io`
//! and its housekeeping stops any running sandbox that is not one of its pods, which killed
//! CRI checks at random (issue 15: `StopPodSandbox` 90 ms after the check container started).
//! The kubelet neither lists nor touches other namespaces.
//!
//! What a wasm pod needs from the node is still what is checked:
//! 1. CRI itself reports the handler: before the check, `Status{verbose}` must list runtime
//!    `wasmkube` ([`crate::verify`]), and the check takes its runtime type, runtime path and
//!    options from that CRI view, not from the file the installer wrote.
//! 2. containerd's runtime manager starts shims the same way for CRI and for native
//!    containers: CRI's `CreateContainer`/`StartContainer` end in the same task service
//!    `Create` with the container's runtime name (= `runtime_type`), `runtime_path` and the
//!    runtime options CRI derives from the handler's `options` table (rebuilt here as CRI does:
//!    `runtimeoptions.v1.Options`, TOML body from containerd 1.7 on). So the same shim binary
//!    is resolved (by `runtime_path`, or on containerd 1.6 by name on containerd's `PATH`,
//!    where the installer links it), started with the same options, and runs the module.
//! 3. The module ran: only a wasm binary is accepted as the check module, and only running it
//!    yields exit code 42 (the shim exits 127 for a module it cannot find; a runtime that does
//!    not run wasm cannot execute it at all).
//!
//! What it does not cover: the pod sandbox (the pause container) that CRI starts through the
//! shim first, CNI, and the kubelet's own view of the RuntimeClass. Those are exercised by the
//! first real wasm pod (the e2e suite runs them); containerd 1.6's sandbox-by-name lookup is why
//! the installer keeps the PATH link there.
//!
//! Each run is cleaned up whatever happens (task, container, host directory); leftovers of an
//! earlier crashed run in the namespace are removed first.
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteNamespaceRequest, DeleteTaskRequest, KillRequest, ListContainersRequest, StartRequest,
    WaitRequest,
};
use containerd_client::tonic::{self, metadata::MetadataValue, transport::Channel, Code, Request};
use containerd_client::types::Mount;

pub use crate::check_bundle::EXPECTED_EXIT;
use crate::check_bundle::{self, BundleError, CheckDir, ID_PREFIX, MODULE_IN_ROOTFS};
use crate::runtime_options;
use crate::verify::{major_minor, CriState};

/// The containerd namespace the check runs in: not `k8s.io`, so the kubelet never sees it.
pub const NAMESPACE: &str = "wasmkube-check";
/// How long the check container may take, start to exit.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Per call; a task create includes the shim's start.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a killed task may take to stop before its delete is given up.
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);
/// SIGKILL
const SIGKILL: u32 = 9;

/// What to run, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WasmCheck {
    /// The module (a local file: in the installer image, [`crate::cli::CHECK_MODULE`]).
    pub module: PathBuf,
    /// The host's `/` as mounted here (`--host-root`).
    pub host_root: PathBuf,
    /// The host's `/` as containerd sees it (`/` on a node).
    pub host_root_for_containerd: PathBuf,
}

/// A passed check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passed {
    pub took: Duration,
    /// The container's id (also its directory's name).
    pub id: String,
    /// The runtime as CRI reported it.
    pub runtime_type: String,
    pub runtime_path: String,
    /// Containers or directories of earlier crashed checks that were removed first.
    pub leftovers: usize,
}

impl Passed {
    /// One sentence for the report.
    pub fn describe(&self) -> String {
        format!(
            "a wasm container ran {MODULE_IN_ROOTFS} through the wasmkube handler's runtime {} \
             ({}) in containerd namespace {NAMESPACE} and exited {EXPECTED_EXIT} in {} ms",
            self.runtime_type,
            if self.runtime_path.is_empty() {
                "found by name"
            } else {
                &self.runtime_path
            },
            self.took.as_millis()
        )
    }
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("wasm check: CRI does not report the wasmkube handler's runtime type ({0})")]
    NoHandler(String),
    #[error("wasm check: {0}")]
    Bundle(#[from] BundleError),
    #[error("wasm check: cannot reach containerd at {}: {message}", socket.display())]
    Unreachable { socket: PathBuf, message: String },
    #[error("wasm check: containerd {call} failed: {message}")]
    Call {
        call: &'static str,
        code: Option<Code>,
        message: String,
    },
    #[error("wasm check: the module exited with {got}, expected {EXPECTED_EXIT} (the wasmkube handler did not run it){output}")]
    WrongExit { got: u32, output: String },
    #[error("wasm check: the container did not exit within {after:?}{output}")]
    Timeout { after: Duration, output: String },
    #[error("wasm check: no async runtime: {0}")]
    Runtime(std::io::Error),
}

impl CheckError {
    pub fn reason(&self) -> &'static str {
        wasmkube_contract::installer::reasons::WASM_CHECK_FAILED
    }

    fn code(&self) -> Option<Code> {
        match self {
            CheckError::Call { code, .. } => *code,
            _ => None,
        }
    }
}

/// Runs the check against containerd at `socket`, with the handler as CRI reported it in `cri`.
pub fn run(socket: &Path, cri: &CriState, check: &WasmCheck) -> Result<Passed, CheckError> {
    let handler = cri
        .handler
        .as_ref()
        .filter(|h| !h.runtime_type.is_empty())
        .ok_or_else(|| {
            CheckError::NoHandler(match &cri.handler {
                None => "no such handler".into(),
                Some(_) => "listed without its runtime config".into(),
            })
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CheckError::Runtime)?;
    rt.block_on(async {
        let start = Instant::now();
        let mut ctd = Containerd::connect(socket).await?;
        let base = check_bundle::base_dir(&check.host_root)?;
        let mut leftovers = ctd.remove_leftovers().await?;
        leftovers += check_bundle::remove_leftovers(&base)?.len();
        if leftovers > 0 {
            tracing::warn!(leftovers, "removed what earlier wasm checks left behind");
        }
        let id = format!("{ID_PREFIX}{}-{}", std::process::id(), start_nanos());
        let dir = CheckDir::create(
            &check.host_root,
            &check.host_root_for_containerd,
            &id,
            &check.module,
        )?;
        let outcome = ctd.run(&id, &dir, handler, cri).await;
        let torn_down = ctd.teardown(&id).await;
        let output = dir.output();
        let removed = dir.remove();
        ctd.forget_namespace().await;
        let with_output = |e: CheckError| match e {
            CheckError::WrongExit { got, .. } => CheckError::WrongExit {
                got,
                output: quoted(&output),
            },
            CheckError::Timeout { after, .. } => CheckError::Timeout {
                after,
                output: quoted(&output),
            },
            e => e,
        };
        outcome.map_err(with_output)?;
        torn_down?;
        removed?;
        let passed = Passed {
            took: start.elapsed(),
            id,
            runtime_type: handler.runtime_type.clone(),
            runtime_path: handler.runtime_path.clone(),
            leftovers,
        };
        tracing::info!(id = %passed.id, ms = passed.took.as_millis() as u64, "wasm check passed");
        Ok(passed)
    })
}

/// Removes what killed checks left: their containers (and tasks) in [`NAMESPACE`], their
/// directories under the check's base, and the base itself when that leaves it empty. For
/// `uninstall`, which runs no check of its own. Returns how many leftovers there were.
pub fn remove_leftovers(socket: &Path, host_root: &Path) -> Result<usize, CheckError> {
    let base = check_bundle::base_dir(host_root)?;
    let mut removed = check_bundle::remove_leftovers(&base)?.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CheckError::Runtime)?;
    removed += rt.block_on(async {
        let mut ctd = Containerd::connect(socket).await?;
        let n = ctd.remove_leftovers().await?;
        ctd.forget_namespace().await;
        Ok::<_, CheckError>(n)
    })?;
    // `/var/lib/wasmkube/check`, then `/var/lib/wasmkube`: each only if empty (the first may
    // be gone already).
    let _ = std::fs::remove_dir(&base);
    if let Some(top) = base.parent() {
        let _ = std::fs::remove_dir(top);
    }
    Ok(removed)
}

fn quoted(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; {output}")
    }
}

fn start_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A request in [`NAMESPACE`].
fn req<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(
        "containerd-namespace",
        MetadataValue::from_static(NAMESPACE),
    );
    r
}

async fn call<T>(
    call: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CheckError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(CheckError::Call {
            call,
            code: None,
            message: format!("timed out after {timeout:?}"),
        }),
        Ok(Err(status)) => Err(CheckError::Call {
            call,
            code: Some(status.code()),
            message: status.message().to_string(),
        }),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// containerd's container, task and namespace services on one channel.
struct Containerd {
    containers: ContainersClient<Channel>,
    tasks: TasksClient<Channel>,
    namespaces: NamespacesClient<Channel>,
}

impl Containerd {
    async fn connect(socket: &Path) -> Result<Self, CheckError> {
        let channel = tokio::time::timeout(CALL_TIMEOUT, containerd_client::connect(socket))
            .await
            .map_err(|_| "connect timed out".to_string())
            .and_then(|r| r.map_err(|e| crate::verify::source_chain(&e)))
            .map_err(|message| CheckError::Unreachable {
                socket: socket.to_path_buf(),
                message,
            })?;
        Ok(Containerd::new(channel))
    }

    fn new(channel: Channel) -> Self {
        Containerd {
            containers: ContainersClient::new(channel.clone()),
            tasks: TasksClient::new(channel.clone()),
            namespaces: NamespacesClient::new(channel),
        }
    }

    /// Creates, starts and waits for the check container; `Ok` when it exited 42.
    async fn run(
        &mut self,
        id: &str,
        dir: &CheckDir,
        handler: &crate::verify::Handler,
        cri: &CriState,
    ) -> Result<(), CheckError> {
        let options = handler.options.as_ref();
        let spec = check_bundle::spec(NAMESPACE, id, runtime_options::systemd_cgroup(options))?;
        let container = Container {
            id: id.to_string(),
            labels: HashMap::from([("wasmkube.dev/check".to_string(), "true".to_string())]),
            runtime: Some(Runtime {
                name: handler.runtime_type.clone(),
                // As CRI does: the options travel with the container's runtime, and containerd
                // hands them to the shim when the task is created.
                options: runtime_options::runtime_options(options, major_minor(&cri.version)),
            }),
            spec: Some(check_bundle::spec_any(&spec)?),
            ..Default::default()
        };
        call(
            "Containers.Create",
            CALL_TIMEOUT,
            self.containers.create(req(CreateContainerRequest {
                container: Some(container),
            })),
        )
        .await?;
        let path = |p: PathBuf| p.display().to_string();
        tracing::debug!(id, rootfs = %dir.rootfs().display(), "creating the check task");
        call(
            "Tasks.Create",
            CALL_TIMEOUT,
            self.tasks.create(req(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: vec![Mount {
                    r#type: "bind".to_string(),
                    source: path(dir.rootfs()),
                    target: String::new(),
                    options: vec!["rbind".to_string(), "ro".to_string()],
                }],
                stdout: path(dir.output_path("stdout")),
                stderr: path(dir.output_path("stderr")),
                runtime_path: handler.runtime_path.clone(),
                ..Default::default()
            })),
        )
        .await?;
        call(
            "Tasks.Start",
            CALL_TIMEOUT,
            self.tasks.start(req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            })),
        )
        .await?;
        crate::crash_point::crash_point("wasm-check");
        let exited = call(
            "Tasks.Wait",
            RUN_TIMEOUT,
            self.tasks.wait(req(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            })),
        )
        .await
        .map_err(|e| match e {
            CheckError::Call { code: None, .. } => CheckError::Timeout {
                after: RUN_TIMEOUT,
                output: String::new(),
            },
            e => e,
        })?;
        if i64::from(exited.exit_status) == i64::from(EXPECTED_EXIT) {
            Ok(())
        } else {
            Err(CheckError::WrongExit {
                got: exited.exit_status,
                output: String::new(),
            })
        }
    }

    /// Kills and deletes the task (if any) and deletes the container (if any).
    async fn teardown(&mut self, id: &str) -> Result<(), CheckError> {
        let _ = call(
            "Tasks.Kill",
            CALL_TIMEOUT,
            self.tasks.kill(req(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: SIGKILL,
                all: true,
            })),
        )
        .await;
        let start = Instant::now();
        loop {
            let deleted = call(
                "Tasks.Delete",
                CALL_TIMEOUT,
                self.tasks.delete(req(DeleteTaskRequest {
                    container_id: id.to_string(),
                })),
            )
            .await;
            match deleted {
                Ok(_) => break,
                Err(e) if e.code() == Some(Code::NotFound) => break,
                // Still stopping after the kill: try again.
                Err(e) if start.elapsed() < DELETE_TIMEOUT => {
                    tracing::debug!(id, "task not deleted yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        match call(
            "Containers.Delete",
            CALL_TIMEOUT,
            self.containers
                .delete(req(DeleteContainerRequest { id: id.to_string() })),
        )
        .await
        {
            Err(e) if e.code() != Some(Code::NotFound) => Err(e),
            _ => Ok(()),
        }
    }

    /// Tears down every container in the namespace: only earlier checks put any there.
    async fn remove_leftovers(&mut self) -> Result<usize, CheckError> {
        let listed = call(
            "Containers.List",
            CALL_TIMEOUT,
            self.containers.list(req(ListContainersRequest::default())),
        )
        .await?;
        for c in &listed.containers {
            tracing::warn!(id = %c.id, "removing a container an earlier wasm check left");
            self.teardown(&c.id).await?;
        }
        Ok(listed.containers.len())
    }

    /// Deletes the (now empty) namespace, so nothing of the check stays in containerd; best
    /// effort: containerd refuses while anything is left in it.
    async fn forget_namespace(&mut self) {
        if let Err(e) = call(
            "Namespaces.Delete",
            CALL_TIMEOUT,
            self.namespaces.delete(Request::new(DeleteNamespaceRequest {
                name: NAMESPACE.to_string(),
            })),
        )
        .await
        {
            tracing::debug!("namespace {NAMESPACE} kept: {e}");
        }
    }
}
