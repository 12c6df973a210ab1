//! Asking containerd, over its CRI socket, what it actually loaded: `Version` for the version
//! and `Status{verbose: true}` for the runtime handlers in its live CRI config.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{StatusRequest, VersionRequest};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config_patch::HANDLER;

/// Per-call timeout; containerd answers these in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The runtime handler as containerd reports it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Handler {
    pub runtime_type: String,
    pub runtime_path: String,
    /// The runtime's `options` table as CRI holds it (`None`: no table, which CRI passes on as
    /// no options at all). The wasm check hands the shim the same options.
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What containerd told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriState {
    /// `containerd` `v1.6.20` style.
    pub runtime_name: String,
    pub version: String,
    /// Our handler, when containerd serves it.
    pub handler: Option<Handler>,
}

impl CriState {
    /// The containerd major version (`1` from `v1.6.20~ds1`).
    pub fn major(&self) -> Option<u32> {
        major_minor(&self.version).map(|(major, _)| major)
    }
}

/// `(major, minor)` of a containerd version string (`v1.6.20~ds1`, `1.7.24`, `2.0.0-rc.1`).
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()
        .unwrap_or("0")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// Whether this containerd needs the shim on its `PATH` as well as `runtime_path`: 1.6 (and
/// older) ignore `runtime_path` when they start a pod sandbox; 1.7 and 2.x do not. An unknown
/// version gets the link, so a pod never fails for the lack of it.
pub fn needs_path_link(version: Option<&str>) -> bool {
    match version.and_then(major_minor) {
        Some((major, minor)) => major < 1 || (major == 1 && minor < 7),
        None => true,
    }
}

/// Why containerd could not be asked, or did not say what we need.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot reach containerd's CRI at {}: {message}", socket.display())]
    Unreachable { socket: PathBuf, message: String },
    #[error("containerd's CRI call {call} failed: {message}")]
    Call { call: &'static str, message: String },
    #[error("{what} not confirmed by containerd within {after:?}: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
}

impl VerifyError {
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Unreachable { .. } => {
                wasmkube_contract::installer::reasons::CONTAINERD_UNREACHABLE
            }
            VerifyError::Call { .. } => wasmkube_contract::installer::reasons::CRI_CALL_FAILED,
            VerifyError::Timeout { .. } => wasmkube_contract::installer::reasons::VERIFY_TIMEOUT,
        }
    }
}

/// One round of Version + Status against `socket`.
pub fn probe(socket: &Path) -> Result<CriState, VerifyError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| VerifyError::Unreachable {
            socket: socket.to_path_buf(),
            message: format!("no async runtime: {e}"),
        })?;
    rt.block_on(probe_async(socket))
}

/// A CRI channel over containerd's unix socket.
pub(crate) async fn connect(socket: &Path) -> Result<Channel, VerifyError> {
    let unreachable = |message: String| VerifyError::Unreachable {
        socket: socket.to_path_buf(),
        message,
    };
    let path = socket.to_path_buf();
    let endpoint = Endpoint::try_from("http://[::]:50051")
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(CALL_TIMEOUT);
    tokio::time::timeout(
        CALL_TIMEOUT,
        endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        })),
    )
    .await
    .map_err(|_| unreachable("connect timed out".into()))?
    .map_err(|e| unreachable(source_chain(&e)))
}

async fn probe_async(socket: &Path) -> Result<CriState, VerifyError> {
    let channel = connect(socket).await?;
    let mut client = RuntimeServiceClient::new(channel);
    let call = |call: &'static str| move |message: String| VerifyError::Call { call, message };
    let version = tokio::time::timeout(
        CALL_TIMEOUT,
        client.version(VersionRequest {
            version: "v1".into(),
        }),
    )
    .await
    .map_err(|_| call("Version")("timed out".into()))?
    .map_err(|e| call("Version")(e.message().to_string()))?
    .into_inner();
    let status = tokio::time::timeout(CALL_TIMEOUT, client.status(StatusRequest { verbose: true }))
        .await
        .map_err(|_| call("Status")("timed out".into()))?
        .map_err(|e| call("Status")(e.message().to_string()))?
        .into_inner();
    let mut handler = status
        .info
        .values()
        .filter_map(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        .find_map(|v| find_handler(&v));
    if handler.is_none() && status.runtime_handlers.iter().any(|h| h.name == HANDLER) {
        handler = Some(Handler::default());
    }
    Ok(CriState {
        runtime_name: version.runtime_name,
        version: version.runtime_version,
        handler,
    })
}

pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Finds `runtimes.<HANDLER>` anywhere in the CRI config JSON (its place differs between
/// containerd 1.x and 2.x).
pub fn find_handler(v: &serde_json::Value) -> Option<Handler> {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(h) = m
                .get("runtimes")
                .and_then(|r| r.get(HANDLER))
                .and_then(|h| h.as_object())
            {
                let s = |keys: &[&str]| {
                    keys.iter()
                        .find_map(|k| h.get(*k).and_then(|v| v.as_str()))
                        .unwrap_or("")
                        .to_string()
                };
                let options = ["options", "Options"]
                    .iter()
                    .find_map(|k| h.get(*k).and_then(|v| v.as_object()))
                    .cloned();
                return Some(Handler {
                    runtime_type: s(&["runtimeType", "runtime_type", "Type"]),
                    runtime_path: s(&["runtimePath", "runtime_path", "Path"]),
                    options,
                });
            }
            m.values().find_map(find_handler)
        }
        serde_json::Value::Array(a) => a.iter().find_map(find_handler),
        _ => None,
    }
}

/// Polls until containerd answers and `done` accepts its state, or `timeout` passes.
pub fn wait_for(
    socket: &Path,
    timeout: Duration,
    what: &str,
    done: impl Fn(&CriState) -> bool,
) -> Result<CriState, VerifyError> {
    let start = Instant::now();
    loop {
        let last = match probe(socket) {
            Ok(s) if done(&s) => return Ok(s),
            Ok(s) => format!(
                "containerd {} answers but reports handler {:?}",
                s.version, s.handler
            ),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(VerifyError::Timeout {
                what: what.to_string(),
                after: timeout,
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_handler_in_1x_and_2x_shapes() {
        let v1: serde_json::Value = serde_json::from_str(
            r#"{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"runtimeType":"io.containerd.runc.v2"},"wasmkube":{"runtimeType":"io.containerd.wasmkube.v1","runtimePath":"/opt/wasmkube/bin/containerd-shim-wasmkube-v1"}}}}"#,
        )
        .expect("json");
        assert_eq!(
            find_handler(&v1),
            Some(Handler {
                runtime_type: "io.containerd.wasmkube.v1".into(),
                runtime_path: "/opt/wasmkube/bin/containerd-shim-wasmkube-v1".into(),
                options: None,
            })
        );
        // containerd 2.x, with an options table (a null one is no table).
        let v2: serde_json::Value = serde_json::from_str(
            r#"{"config":{"containerd":{"runtimes":{"wasmkube":{"runtimeType":"io.containerd.wasmkube.v1","runtimePath":"/p","options":{"SystemdCgroup":true}}}}}}"#,
        )
        .expect("json");
        let h = find_handler(&v2).expect("handler");
        assert_eq!(h.options.expect("options")["SystemdCgroup"], true);
        let null: serde_json::Value =
            serde_json::from_str(r#"{"runtimes":{"wasmkube":{"runtimeType":"t","options":null}}}"#)
                .expect("json");
        assert_eq!(find_handler(&null).expect("handler").options, None);
        let none: serde_json::Value =
            serde_json::from_str(r#"{"containerd":{"runtimes":{"runc":{}}}}"#).expect("json");
        assert_eq!(find_handler(&none), None);
    }

    #[test]
    fn unreachable_socket_is_an_error_not_a_hang() {
        let start = Instant::now();
        let e = probe(Path::new("/nonexistent/containerd.sock")).expect_err("must fail");
        assert_eq!(e.reason(), "ContainerdUnreachable");
        assert!(start.elapsed() < Duration::from_secs(5));
        let state = CriState {
            runtime_name: "containerd".into(),
            version: "v1.6.20~ds1".into(),
            handler: None,
        };
        assert_eq!(state.major(), Some(1));
    }

    #[test]
    fn only_containerd_1_6_and_unknown_versions_need_the_path_link() {
        for (v, needs) in [
            (Some("v1.6.20~ds1"), true),
            (Some("1.6.20~ds1-1+deb12u3"), true),
            (Some("1.5.9"), true),
            (Some("v1.7.24"), false),
            (Some("1.7.0-rc.1"), false),
            (Some("2.0.0"), false),
            (Some("v2.1.3-k3s1"), false),
            (Some("garbage"), true),
            (None, true),
        ] {
            assert_eq!(needs_path_link(v), needs, "{v:?}");
        }
        assert_eq!(major_minor("v2.0.0-rc.1"), Some((2, 0)));
    }
}
