//! A CRI client driving containerd the way a kubelet does: RunPodSandbox, CreateContainer,
//! StartContainer, ContainerStatus, logs, StopContainer/StopPodSandbox/Remove.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{self as cri};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connected CRI client with its own Tokio runtime (tests are synchronous).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// A pod as a test describes it.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub handler: String,
    pub host_network: bool,
    pub log_dir: PathBuf,
    /// The pod's cgroup (its containers' cgroups are under it), as the kubelet's
    /// `/kubepods/…/pod<uid>`; `None` leaves it to the runtime.
    pub cgroup_parent: Option<String>,
}

/// A container as a test describes it.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub memory_limit: Option<i64>,
    /// Read-only bind mounts (host path, container path), as the kubelet adds `/etc/hosts`.
    pub mounts: Vec<(PathBuf, String)>,
    /// Writable bind mounts (host path, container path), as a claim or an emptyDir.
    pub writable_mounts: Vec<(PathBuf, String)>,
}

fn err(e: tonic::Status) -> String {
    format!("CRI error {:?}: {}", e.code(), e.message())
}

impl Cri {
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let socket = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                Endpoint::try_from("http://[::]:50051")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                UnixStream::connect(socket).await?,
                            ))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("cannot connect to CRI: {e}"))?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// `(runtime name, version)` from the Version call.
    pub fn version(&mut self) -> Result<(String, String), String> {
        let r = self
            .rt
            .block_on(self.runtime.version(cri::VersionRequest {
                version: "v1".into(),
            }))
            .map_err(err)?;
        let v = r.into_inner();
        Ok((v.runtime_name, v.runtime_version))
    }

    /// The runtime handlers (CRI status, verbose), as containerd reports its config.
    pub fn status_info(&mut self) -> Result<String, String> {
        let r = self
            .rt
            .block_on(self.runtime.status(cri::StatusRequest { verbose: true }))
            .map_err(err)?;
        Ok(r.into_inner()
            .info
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// PullImage through the CRI, as the kubelet pulls: the image's reference in the store.
    pub fn pull_image(&mut self, image: &str) -> Result<String, String> {
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = self.rt.block_on(self.images.pull_image(req)).map_err(err)?;
        Ok(r.into_inner().image_ref)
    }

    /// Whether an image is present in the CRI image store.
    pub fn has_image(&mut self, image: &str) -> Result<bool, String> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let r = self
            .rt
            .block_on(self.images.image_status(req))
            .map_err(err)?;
        Ok(r.into_inner().image.is_some())
    }

    pub fn sandbox_config(pod: &PodSpec) -> cri::PodSandboxConfig {
        let network = if pod.host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        };
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: pod.name.clone(),
                uid: format!("uid-{}", pod.name),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: if pod.host_network {
                String::new()
            } else {
                pod.name.clone()
            },
            log_directory: pod.log_dir.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: pod.cgroup_parent.clone().unwrap_or_default(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn run_pod(&mut self, pod: &PodSpec) -> Result<String, String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(Self::sandbox_config(pod)),
            runtime_handler: pod.handler.clone(),
        };
        let r = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(req))
            .map_err(err)?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// Creates a container; its log goes to `<pod log dir>/<name>.log`.
    pub fn create_container(
        &mut self,
        pod_id: &str,
        pod: &PodSpec,
        c: &ContainerSpec,
    ) -> Result<String, String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: c.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: c.image.clone(),
                ..Default::default()
            }),
            args: c.args.clone(),
            envs: c
                .env
                .iter()
                .map(|(k, v)| cri::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            log_path: format!("{}.log", c.name),
            mounts: c
                .mounts
                .iter()
                .map(|m| (m, true))
                .chain(c.writable_mounts.iter().map(|m| (m, false)))
                .map(|((host, path), readonly)| cri::Mount {
                    container_path: path.clone(),
                    host_path: host.display().to_string(),
                    readonly,
                    ..Default::default()
                })
                .collect(),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: c.memory_limit.unwrap_or(0),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(Self::sandbox_config(pod)),
        };
        let r = self
            .rt
            .block_on(self.runtime.create_container(req))
            .map_err(err)?;
        Ok(r.into_inner().container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<(), String> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.rt
            .block_on(self.runtime.start_container(req))
            .map_err(err)?;
        Ok(())
    }

    pub fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus, String> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let r = self
            .rt
            .block_on(self.runtime.container_status(req))
            .map_err(err)?;
        r.into_inner().status.ok_or_else(|| "no status".to_string())
    }

    /// Waits for the container to exit; returns its exit code.
    pub fn wait_exit(&mut self, id: &str, timeout: Duration) -> Result<i32, String> {
        let start = Instant::now();
        loop {
            let s = self.container_status(id)?;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return Ok(s.exit_code);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "container {id} did not exit within {timeout:?}: still {:?} ({} {})",
                    cri::ContainerState::try_from(s.state)
                        .map_or_else(|_| s.state.to_string(), |st| st.as_str_name().to_string()),
                    s.reason,
                    s.message
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Creates `spec` in the pod, starts it, waits up to `timeout` for it to exit, reads its
    /// CRI log and removes it: what a test does to run a container to completion.
    pub fn run_to_exit(
        &mut self,
        pod_id: &str,
        pod: &PodSpec,
        spec: &ContainerSpec,
        timeout: Duration,
    ) -> Result<Exited, String> {
        let id = self
            .create_container(pod_id, pod, spec)
            .map_err(|e| format!("CreateContainer {}: {e}", spec.name))?;
        self.start_container(&id)
            .map_err(|e| format!("StartContainer {}: {e}", spec.name))?;
        let code = self.wait_exit(&id, timeout)?;
        let log = read_log(&pod.log_dir.join(format!("{}.log", spec.name)));
        self.remove_container(&id)
            .map_err(|e| format!("RemoveContainer {}: {e}", spec.name))?;
        Ok(Exited { code, log })
    }

    pub fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<(), String> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        };
        self.rt
            .block_on(self.runtime.stop_container(req))
            .map_err(err)?;
        Ok(())
    }

    pub fn remove_container(&mut self, id: &str) -> Result<(), String> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.rt
            .block_on(self.runtime.remove_container(req))
            .map_err(err)?;
        Ok(())
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub fn remove_pod(&mut self, pod_id: &str) -> Result<(), String> {
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            }))
            .map_err(err)?;
        self.rt
            .block_on(
                self.runtime
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: pod_id.into(),
                    }),
            )
            .map_err(err)?;
        Ok(())
    }
}

/// A container that ran to completion ([`Cri::run_to_exit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exited {
    pub code: i32,
    /// Its CRI log as `(stream, message)` lines.
    pub log: Vec<(String, String)>,
}

impl Exited {
    /// The lines of one stream (`stdout`, `stderr`), each ending in a newline.
    pub fn stream(&self, stream: &str) -> String {
        self.log
            .iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, m)| format!("{m}\n"))
            .collect()
    }

    /// All lines, both streams, each ending in a newline.
    pub fn text(&self) -> String {
        self.log.iter().map(|(_, m)| format!("{m}\n")).collect()
    }
}

/// The message lines of a CRI log file (`<time> <stream> <F|P> <message>`), as
/// `(stream, message)`.
pub fn read_log(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_time, stream, _tag) = (parts.next()?, parts.next()?, parts.next()?);
            Some((stream.to_string(), parts.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// A bridge + host-local CNI network for pod-network tests (no masquerade: no iptables), unique
/// to this test: its own network name, bridge and /24, and its IPAM state in the conf dir, so it
/// shares nothing with a parallel test run or a cluster on this machine (whose conflist,
/// `/var/lib/cni/networks/<name>` and bridge are keyed by name). Dropping it deletes the bridge.
pub struct BridgeCni {
    /// The CNI network name (also the conflist's file name).
    pub name: String,
    /// The Linux bridge (at most 15 bytes).
    pub bridge: String,
    /// `10.233.N.0/24`, with no route on the host when it was picked.
    pub subnet: String,
}

impl BridgeCni {
    /// Writes the conflist into `conf_dir` (containerd's CNI `conf_dir`).
    pub fn write(conf_dir: &Path) -> BridgeCni {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("wasmkube-test-{pid}-{n}");
        // IFNAMSIZ is 16 with the NUL: "wk" + 8 hex of pid + 4 hex of n = 14.
        let bridge = format!("wk{:08x}{:04x}", pid, n & 0xffff);
        let subnet = free_subnet(pid.wrapping_add(n))
            .unwrap_or_else(|| panic!("no free 10.233.N.0/24 on this host (ip -4 route)"));
        let ipam = conf_dir.join("ipam");
        let conf = format!(
            r#"{{"cniVersion":"0.4.0","name":"{name}","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","dataDir":"{ipam}","ranges":[[{{"subnet":"{subnet}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}]}}"#,
            ipam = ipam.display()
        );
        std::fs::create_dir_all(conf_dir).expect("cni dir");
        std::fs::write(conf_dir.join(format!("10-{name}.conflist")), conf).expect("cni conf");
        BridgeCni {
            name,
            bridge,
            subnet,
        }
    }

    /// `10.233.N.` — what this network's pod IPs start with.
    pub fn prefix(&self) -> &str {
        self.subnet.trim_end_matches("0/24")
    }
}

impl Drop for BridgeCni {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A `10.233.N.0/24` no route on this host uses yet, starting from `seed` (so parallel runs
/// start apart); `None` when all 256 are taken.
fn free_subnet(seed: u32) -> Option<String> {
    let routes = std::process::Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (0..256u32)
        .map(|i| seed.wrapping_add(i) % 256)
        .find(|n| !routes.contains(&format!("10.233.{n}.")))
        .map(|n| format!("10.233.{n}.0/24"))
}

impl Cri {
    /// The pod's IP and its network namespace path, from PodSandboxStatus (verbose).
    pub fn pod_network(&mut self, pod_id: &str) -> Result<(String, String), String> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        };
        let r = self
            .rt
            .block_on(self.runtime.pod_sandbox_status(req))
            .map_err(err)?
            .into_inner();
        let ip = r
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        let info = r.info.get("info").cloned().unwrap_or_default();
        let info: serde_json::Value = serde_json::from_str(&info).map_err(|e| e.to_string())?;
        let netns = info
            .pointer("/runtimeSpec/linux/namespaces")
            .and_then(|n| n.as_array())
            .and_then(|a| a.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("no network namespace in sandbox info: {info}"))?;
        Ok((ip, netns))
    }
}
