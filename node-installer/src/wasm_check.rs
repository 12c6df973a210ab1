//! Proof that the node runs wasm: a real pod through CRI with `runtime_handler: wasmkube`, whose
//! container is a wasm module that must exit with the code it is told to. A node is never
//! reported verified on its configuration alone.
//!
//! The module comes from an image already on the node (in a cluster: the installer's own image,
//! which carries `/usr/local/share/wasmkube/check.wasm`), so the check needs no registry, no
//! host directory and no network: the sandbox uses the host network and the sandbox image
//! containerd already has.
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, KeyValue, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::Channel;

use crate::config_patch::HANDLER;
use crate::verify::connect;

/// The exit code the module is asked for: only a module that ran returns it.
pub const EXPECTED_EXIT: i32 = 42;
/// How long the check container may take, start to exit.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Per call; a sandbox start includes the shim's start.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WasmCheck {
    /// An image present on the node that holds the module.
    pub image: String,
    /// The module's path inside that image.
    pub module: String,
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Unreachable(#[from] crate::verify::VerifyError),
    #[error("wasm check: CRI {call} failed: {message}")]
    Call { call: &'static str, message: String },
    #[error("wasm check: the module exited with {got}, expected {EXPECTED_EXIT} (the wasmkube handler did not run it)")]
    WrongExit { got: i32 },
    #[error("wasm check: the container did not exit within {0:?}")]
    Timeout(Duration),
}

impl CheckError {
    pub fn reason(&self) -> &'static str {
        "WasmCheckFailed"
    }
}

/// Runs the check against containerd at `socket`; returns how long it took.
pub fn run(socket: &Path, check: &WasmCheck) -> Result<Duration, CheckError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CheckError::Call {
            call: "runtime",
            message: e.to_string(),
        })?;
    rt.block_on(async {
        let start = Instant::now();
        let mut client = RuntimeServiceClient::new(connect(socket).await?);
        let id = format!("wasmkube-check-{}-{}", std::process::id(), start_nanos());
        let sandbox = sandbox_config(&id);
        let pod_id = call(
            "RunPodSandbox",
            client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: HANDLER.to_string(),
            }),
        )
        .await?
        .pod_sandbox_id;
        let outcome = run_container(&mut client, &pod_id, &sandbox, check).await;
        // Always clean up: stopping the sandbox stops the container; removing it removes both.
        let _ = call(
            "StopPodSandbox",
            client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            }),
        )
        .await;
        let _ = call(
            "RemovePodSandbox",
            client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod_id,
            }),
        )
        .await;
        outcome.map(|()| start.elapsed())
    })
}

fn start_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn sandbox_config(id: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: id.to_string(),
            uid: id.to_string(),
            namespace: "wasmkube-system".to_string(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_container(
    client: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    sandbox: &PodSandboxConfig,
    check: &WasmCheck,
) -> Result<(), CheckError> {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "check".to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: check.image.clone(),
            ..Default::default()
        }),
        command: vec![check.module.clone()],
        envs: vec![KeyValue {
            key: "WK_EXIT".to_string(),
            value: EXPECTED_EXIT.to_string(),
        }],
        ..Default::default()
    };
    let id = call(
        "CreateContainer",
        client.create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        }),
    )
    .await?
    .container_id;
    call(
        "StartContainer",
        client.start_container(StartContainerRequest {
            container_id: id.clone(),
        }),
    )
    .await?;
    let start = Instant::now();
    loop {
        let status = call(
            "ContainerStatus",
            client.container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            }),
        )
        .await?
        .status;
        if let Some(s) = status.filter(|s| s.state == ContainerState::ContainerExited as i32) {
            return if s.exit_code == EXPECTED_EXIT {
                Ok(())
            } else {
                Err(CheckError::WrongExit { got: s.exit_code })
            };
        }
        if start.elapsed() > RUN_TIMEOUT {
            return Err(CheckError::Timeout(RUN_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call<T>(
    call: &'static str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CheckError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Err(_) => Err(CheckError::Call {
            call,
            message: format!("timed out after {CALL_TIMEOUT:?}"),
        }),
        Ok(Err(status)) => Err(CheckError::Call {
            call,
            message: status.message().to_string(),
        }),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}
