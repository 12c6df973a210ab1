//! The WasmApp fields that grant the guest something beyond computing: `outbound`, `config`
//! and `volumes`. The shim enforces each inside the WASI context; the operator turns them into
//! the pod's volumes and the grants document (`builders::grants`).
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource,
    SecretVolumeSource,
};
use schemars::JsonSchema;

use super::{DNS_LABEL, DNS_SUBDOMAIN};
use serde::{Deserialize, Serialize};

/// `spec.outbound`: the destinations granted, in Spin's `allowed_outbound_hosts` syntax.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundSpec {
    /// `SCHEME://HOST[:PORT]` entries (`*` alone: anything): e.g. `https://api.example.com`,
    /// `http://*.default.svc.cluster.local:8080`, `*://db.internal:5432`, `redis://cache:6379`,
    /// `*://10.0.0.0/8:*`. The port defaults to the scheme's (80, 443, 6379, 5432, 3306, 1883);
    /// other schemes and `*` need one. wasi:sockets connections match any entry's host and port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 128),
        inner(
            length(min = 1, max = 300),
            regex(
                pattern = r"^(\*|(\*|[A-Za-z][A-Za-z0-9+.-]*)://(\*|(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?|[0-9.]+(/[0-9]{1,2})?|\[[0-9A-Fa-f:.]+(/[0-9]{1,3})?\])(:(\*|[0-9]{1,5}(-[0-9]{1,5})?))?)$"
            )
        )
    )]
    pub allowed_hosts: Vec<String>,
    /// CIDRs (or addresses) refused even when an allowed name resolves into them; checked on
    /// the resolved address. Link-local (169.254.0.0/16, fe80::/10: cloud metadata) is refused
    /// unless an `allowedHosts` entry names it by address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 128),
        inner(
            length(min = 2, max = 50),
            regex(pattern = r"^([0-9.]+(/[0-9]{1,2})?|[0-9A-Fa-f:.]+(/[0-9]{1,3})?)$")
        )
    )]
    pub blocked_networks: Vec<String>,
}

/// `spec.config`: what `wasi:config/store` answers. Keys from later sources replace earlier
/// ones: `values`, then each of `fromConfigMaps`, then each of `fromSecrets`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.values) || self.values.all(k, k.matches('^[-._a-zA-Z0-9]+$') && size(k) <= 253)",
        "message": "config.values keys are ConfigMap keys: letters, digits, '-', '_' and '.', at most 253",
        "fieldPath": ".values",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct ConfigSpec {
    /// Values written here; they are part of the pod spec, so never put a secret here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 256))]
    pub values: BTreeMap<String, String>,
    /// ConfigMaps in this namespace, every key of each. The kubelet keeps them up to date, and
    /// the next instance of the app reads the new values without a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub from_config_maps: Vec<ConfigRef>,
    /// Secrets in this namespace, every key of each: served only through `wasi:config`, never
    /// in the environment, logs, Events or status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub from_secrets: Vec<ConfigRef>,
}

/// A ConfigMap or Secret in the WasmApp's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigRef {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN)
    )]
    pub name: String,
}

/// One entry of `spec.volumes`: a volume the guest sees at `mountPath`. Exactly one source.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.configMap), has(self.secret), has(self.emptyDir), has(self.persistentVolumeClaim)].filter(x, x).size() == 1",
        "message": "a volume has exactly one of configMap, secret, emptyDir and persistentVolumeClaim",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!self.mountPath.matches('^/(dev|proc|sys)(/|$)') && self.mountPath != '/'",
        "message": "mountPath must not be /, nor under /dev, /proc or /sys",
        "fieldPath": ".mountPath",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "!self.name.startsWith('wasmkube-')",
        "message": "volume names starting with wasmkube- are the operator's",
        "fieldPath": ".name",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct VolumeSpec {
    /// The volume's name in the pod (`wasmkube-` is reserved).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = DNS_LABEL)
    )]
    pub name: String,
    /// Where the guest sees it (and the container mounts it): an absolute path.
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/.*[^/]$"))]
    pub mount_path: String,
    /// The guest may only read it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
}

/// Default for `keyValue[].timeoutMs`.
pub const DEFAULT_KV_TIMEOUT_MS: u32 = 2000;

/// One entry of `spec.keyValue`: a store the app opens by `name` through `wasi:keyvalue`.
/// Exactly one backend.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.redis), has(self.file), has(self.memory)].filter(x, x).size() == 1",
        "message": "a key-value store has exactly one of redis, file and memory",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!has(self.shared) || has(self.redis)",
        "message": "only a redis store can be shared between apps",
        "fieldPath": ".shared",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct KeyValueSpec {
    /// What the app passes to `wasi:keyvalue/store.open` (Spin's default store is `default`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = DNS_LABEL)
    )]
    pub name: String,
    /// A Redis server, its URL (`redis://[user:password@]host:port[/db]`, credentials
    /// included) in a Secret: replicas share the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStoreSpec>,
    /// An embedded database on a PersistentVolumeClaim, for one replica only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileStoreSpec>,
    /// The pod's memory: shared by the pod's instances, lost when the pod restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStoreSpec>,
    /// Share the data with every app in the namespace that names the same shared store;
    /// without it, the keys are this app's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = DNS_LABEL)
    )]
    pub shared: Option<String>,
    /// The longest one call may take before the app gets an error (default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 30000))]
    pub timeout_ms: Option<u32>,
}

/// `keyValue[].redis`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisStoreSpec {
    /// The Secret (in the app's namespace) holding the URL.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN)
    )]
    pub secret_name: String,
    /// The Secret's key holding the URL (default `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
}

/// `keyValue[].file`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileStoreSpec {
    /// The PersistentVolumeClaim (in the app's namespace) the database lives on.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN)
    )]
    pub claim_name: String,
}

/// `keyValue[].memory`: no settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct MemoryStoreSpec {}
