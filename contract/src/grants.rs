//! The grants document: what a WasmApp lets its pods do beyond computing.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Environment variable (in the container's spec, never in the guest's environment) holding the
/// JSON [`Grants`].
pub const GRANTS_ENV: &str = "WASMKUBE_GRANTS";
/// The version of the document this build writes and reads.
pub const GRANTS_API_VERSION: &str = "wasmkube.dev/grants/v1";

/// Everything a pod's guest is granted. Absent parts grant nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grants {
    pub api_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Outbound>,
    /// The volumes the guest sees, each preopened at its mount path (`WasmApp.spec.volumes`).
    /// Nothing else the container has mounted is visible to the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// What `wasi:config/store` answers (`WasmApp.spec.config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Config>,
    /// The stores `wasi:keyvalue/store.open` opens, by name (`WasmApp.spec.keyValue`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_value: Vec<KeyValueStore>,
}

/// A key-value store the guest may open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyValueStore {
    /// What the guest passes to `open`.
    pub name: String,
    pub backend: KeyValueBackend,
    /// Put before every key in a shared backend, so apps (and stores) see each other's data
    /// only when they name the same shared store: `<namespace>/<app>/<store>/`, or
    /// `<namespace>/shared/<name>/`.
    pub key_prefix: String,
    /// The longest a backend call may take before the guest gets an error.
    pub timeout_ms: u32,
}

/// Where a store keeps its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum KeyValueBackend {
    /// In the pod's memory: shared by its instances, lost when the container restarts.
    Memory,
    /// An embedded database in `dir` (a volume mounted where the guest cannot see it).
    File { dir: String },
    /// A Redis server; the connection URL (with its credentials) is the file `url_file`, from
    /// a Secret mounted where the guest cannot see it.
    Redis { url_file: String },
}

/// Where the operator mounts what a key-value store needs (a claim, a Secret), by store index.
pub const KEY_VALUE_MOUNT_ROOT: &str = "/dev/.wasmkube/kv";

impl KeyValueStore {
    /// The mount path of the `index`th store's volume.
    pub fn mount_path_for(index: usize) -> String {
        format!("{KEY_VALUE_MOUNT_ROOT}/{index}")
    }
}

/// A volume the guest may use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    /// Where the volume is mounted in the container, and the guest's path for it.
    pub mount_path: String,
    /// The guest may only read it (also when the mount itself is writable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// The guest's configuration: inline values, then each source in order, a later key replacing
/// an earlier one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Values written in the WasmApp (never secrets: the document is in the pod spec).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    /// ConfigMaps and Secrets, mounted where the guest cannot see them; the shim reads each
    /// file as a key when an instance starts, so an update the kubelet writes reaches the next
    /// instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<ConfigSource>,
}

/// One ConfigMap or Secret the configuration is read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSource {
    pub kind: ConfigSourceKind,
    /// The object's name, for messages (never its values).
    pub name: String,
    /// Where its volume is mounted in the container: under [`CONFIG_MOUNT_ROOT`].
    pub mount_path: String,
}

/// What a [`ConfigSource`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigSourceKind {
    ConfigMap,
    Secret,
}

/// Where the operator mounts configuration sources in a wasm container: under `/dev`, the
/// runtime's own tmpfs, so the mount points are not even empty directories in the image's
/// filesystem. The guest's root is a view of the image without any mount (see the shim's
/// `bundle` module), so it never sees them.
pub const CONFIG_MOUNT_ROOT: &str = "/dev/.wasmkube/config";

impl ConfigSource {
    /// The mount path of the `index`th source.
    pub fn mount_path_for(index: usize) -> String {
        format!("{CONFIG_MOUNT_ROOT}/{index}")
    }
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ConfigSourceKind::ConfigMap => write!(f, "ConfigMap {:?}", self.name),
            ConfigSourceKind::Secret => write!(f, "Secret {:?}", self.name),
        }
    }
}

/// Where the guest may connect: `WasmApp.spec.outbound`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbound {
    /// Destinations in Spin's `allowed_outbound_hosts` syntax (see [`crate::HostGrant`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// CIDRs refused even when a granted name resolves into them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_networks: Vec<String>,
}

/// Why a grants document was not taken.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("{GRANTS_ENV} is not a grants document: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("{GRANTS_ENV} is version {found:?}; this shim reads {GRANTS_API_VERSION:?}")]
    Version { found: String },
}

impl Grants {
    /// An empty document of this version: nothing granted.
    pub fn none() -> Self {
        Grants {
            api_version: GRANTS_API_VERSION.into(),
            outbound: None,
            volumes: Vec::new(),
            config: None,
            key_value: Vec::new(),
        }
    }

    /// The document as it goes into [`GRANTS_ENV`].
    pub fn to_env_value(&self) -> String {
        // A struct of strings always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a document written by [`Grants::to_env_value`] of this version.
    pub fn from_env_value(text: &str) -> Result<Self, GrantsError> {
        let grants: Grants = serde_json::from_str(text)?;
        if grants.api_version != GRANTS_API_VERSION {
            return Err(GrantsError::Version {
                found: grants.api_version,
            });
        }
        Ok(grants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_reads_back_as_written() {
        let g = Grants {
            outbound: Some(Outbound {
                allowed_hosts: vec!["https://api.example.com".into()],
                blocked_networks: vec!["10.0.0.0/8".into()],
            }),
            ..Grants::none()
        };
        let text = g.to_env_value();
        assert_eq!(
            text,
            r#"{"apiVersion":"wasmkube.dev/grants/v1","outbound":{"allowedHosts":["https://api.example.com"],"blockedNetworks":["10.0.0.0/8"]}}"#
        );
        assert_eq!(Grants::from_env_value(&text).expect("reads"), g);
    }

    #[test]
    fn volumes_and_config_read_back_as_written() {
        let g = Grants {
            volumes: vec![Volume {
                mount_path: "/data".into(),
                read_only: true,
            }],
            config: Some(Config {
                values: [("greeting".to_string(), "hi".to_string())].into(),
                sources: vec![ConfigSource {
                    kind: ConfigSourceKind::Secret,
                    name: "db".into(),
                    mount_path: ConfigSource::mount_path_for(0),
                }],
            }),
            ..Grants::none()
        };
        let text = g.to_env_value();
        assert_eq!(
            text,
            r#"{"apiVersion":"wasmkube.dev/grants/v1","volumes":[{"mountPath":"/data","readOnly":true}],"config":{"values":{"greeting":"hi"},"sources":[{"kind":"Secret","name":"db","mountPath":"/dev/.wasmkube/config/0"}]}}"#
        );
        assert_eq!(Grants::from_env_value(&text).expect("reads"), g);
        assert_eq!(
            g.config.expect("config").sources[0].to_string(),
            r#"Secret "db""#
        );
    }

    #[test]
    fn another_version_or_an_unknown_field_is_refused() {
        let e =
            Grants::from_env_value(r#"{"apiVersion":"wasmkube.dev/grants/v9"}"#).expect_err("v9");
        assert!(e.to_string().contains("grants/v9"), "{e}");
        let e = Grants::from_env_value(r#"{"apiVersion":"wasmkube.dev/grants/v1","outbund":{}}"#)
            .expect_err("typo");
        assert!(e.to_string().contains("outbund"), "{e}");
    }
}
