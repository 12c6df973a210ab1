//! A WasmApp's grants as its pods carry them: the volumes (granted ones and the configuration
//! sources), the container's mounts of them, and the grants document the shim enforces.
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, SecretVolumeSource, Volume as PodVolume, VolumeMount,
};
use k8s_openapi::api::core::v1::{KeyToPath, PersistentVolumeClaimVolumeSource};
use kube::ResourceExt;
use wasmkube_contract::{
    Config, ConfigSource, ConfigSourceKind, Grants, KeyValueBackend, KeyValueStore, Outbound,
    Volume as GrantedVolume,
};

use crate::crd::{WasmApp, DEFAULT_KV_TIMEOUT_MS};

/// The pod's part of a WasmApp's grants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodGrants {
    pub volumes: Vec<PodVolume>,
    pub mounts: Vec<VolumeMount>,
    /// The document the shim reads ([`wasmkube_contract::GRANTS_ENV`]); every WasmApp pod has
    /// one, so a pod without grants sees no volume at all.
    pub document: Grants,
}

/// Name of the pod volume for the `index`th configuration source.
pub fn config_volume_name(index: usize) -> String {
    format!("wasmkube-config-{index}")
}

/// Name of the pod volume for the `index`th key-value store.
pub fn key_value_volume_name(index: usize) -> String {
    format!("wasmkube-kv-{index}")
}

/// Whether the app has a store only one pod may hold at a time (a `file` store).
pub fn has_single_holder_store(app: &WasmApp) -> bool {
    app.spec.key_value.iter().any(|s| s.file.is_some())
}

pub fn pod_grants(app: &WasmApp) -> PodGrants {
    let spec = &app.spec;
    let mut out = PodGrants {
        document: Grants::none(),
        ..PodGrants::default()
    };
    if let Some(o) = &spec.outbound {
        out.document.outbound = Some(Outbound {
            allowed_hosts: o.allowed_hosts.clone(),
            blocked_networks: o.blocked_networks.clone(),
        });
    }
    for v in &spec.volumes {
        out.volumes.push(PodVolume {
            name: v.name.clone(),
            config_map: v.config_map.clone(),
            secret: v.secret.clone(),
            empty_dir: v.empty_dir.clone(),
            persistent_volume_claim: v.persistent_volume_claim.clone(),
            ..PodVolume::default()
        });
        out.mounts.push(VolumeMount {
            name: v.name.clone(),
            mount_path: v.mount_path.clone(),
            read_only: v.read_only.then_some(true),
            ..VolumeMount::default()
        });
        out.document.volumes.push(GrantedVolume {
            mount_path: v.mount_path.clone(),
            read_only: v.read_only,
        });
    }
    if let Some(c) = &spec.config {
        let refs = c
            .from_config_maps
            .iter()
            .map(|r| (ConfigSourceKind::ConfigMap, &r.name))
            .chain(
                c.from_secrets
                    .iter()
                    .map(|r| (ConfigSourceKind::Secret, &r.name)),
            );
        let mut sources = Vec::new();
        for (index, (kind, name)) in refs.enumerate() {
            let volume = config_volume_name(index);
            let mount_path = ConfigSource::mount_path_for(index);
            out.volumes.push(PodVolume {
                name: volume.clone(),
                config_map: (kind == ConfigSourceKind::ConfigMap).then(|| ConfigMapVolumeSource {
                    name: name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                secret: (kind == ConfigSourceKind::Secret).then(|| SecretVolumeSource {
                    secret_name: Some(name.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..PodVolume::default()
            });
            out.mounts.push(VolumeMount {
                name: volume,
                mount_path: mount_path.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            sources.push(ConfigSource {
                kind,
                name: name.clone(),
                mount_path,
            });
        }
        out.document.config = Some(Config {
            values: c.values.clone(),
            sources,
        });
    }
    let ns = app.namespace().unwrap_or_default();
    for (index, kv) in spec.key_value.iter().enumerate() {
        let volume = key_value_volume_name(index);
        let mount_path = KeyValueStore::mount_path_for(index);
        let mut pod_volume = PodVolume {
            name: volume.clone(),
            ..PodVolume::default()
        };
        let backend = if let Some(r) = &kv.redis {
            pod_volume.secret = Some(SecretVolumeSource {
                secret_name: Some(r.secret_name.clone()),
                items: Some(vec![KeyToPath {
                    key: r.key.clone().unwrap_or_else(|| "url".to_string()),
                    path: "url".to_string(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            });
            Some(KeyValueBackend::Redis {
                url_file: format!("{mount_path}/url"),
            })
        } else if let Some(f) = &kv.file {
            pod_volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: f.claim_name.clone(),
                ..PersistentVolumeClaimVolumeSource::default()
            });
            Some(KeyValueBackend::File {
                dir: mount_path.clone(),
            })
        } else {
            None
        };
        if backend.is_some() {
            out.volumes.push(pod_volume);
            out.mounts.push(VolumeMount {
                name: volume,
                mount_path: mount_path.clone(),
                read_only: kv.redis.is_some().then_some(true),
                ..VolumeMount::default()
            });
        }
        let key_prefix = match &kv.shared {
            Some(shared) => format!("{ns}/shared/{shared}/"),
            None => format!("{ns}/{}/{}/", app.name_any(), kv.name),
        };
        out.document.key_value.push(KeyValueStore {
            name: kv.name.clone(),
            backend: backend.unwrap_or(KeyValueBackend::Memory),
            key_prefix,
            timeout_ms: kv.timeout_ms.unwrap_or(DEFAULT_KV_TIMEOUT_MS),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        ConfigRef, ConfigSpec, FileStoreSpec, KeyValueSpec, MemoryStoreSpec, RedisStoreSpec,
        VolumeSpec, WasmAppSpec,
    };
    use k8s_openapi::api::core::v1::EmptyDirVolumeSource;

    fn app(spec: WasmAppSpec) -> WasmApp {
        let mut app = WasmApp::new("counter", spec);
        app.metadata.namespace = Some("shop".into());
        app
    }

    #[test]
    fn no_grants_is_an_empty_document_and_no_volume() {
        let g = pod_grants(&app(WasmAppSpec::default()));
        assert_eq!(g.document, Grants::none());
        assert!(g.volumes.is_empty() && g.mounts.is_empty());
    }

    #[test]
    fn volumes_and_config_sources_become_pod_volumes_mounts_and_grants_in_order() {
        let spec = WasmAppSpec {
            volumes: vec![VolumeSpec {
                name: "scratch".into(),
                mount_path: "/scratch".into(),
                read_only: true,
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..VolumeSpec::default()
            }],
            config: Some(ConfigSpec {
                values: [("a".to_string(), "1".to_string())].into(),
                from_config_maps: vec![ConfigRef { name: "cm".into() }],
                from_secrets: vec![ConfigRef { name: "s".into() }],
            }),
            ..WasmAppSpec::default()
        };
        let g = pod_grants(&app(spec));
        let names: Vec<&str> = g.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["scratch", "wasmkube-config-0", "wasmkube-config-1"]);
        assert_eq!(
            g.volumes[1].config_map.as_ref().map(|c| c.name.as_str()),
            Some("cm")
        );
        assert_eq!(
            g.volumes[2]
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("s")
        );
        let mounts: Vec<(&str, Option<bool>)> = g
            .mounts
            .iter()
            .map(|m| (m.mount_path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/scratch", Some(true)),
                ("/dev/.wasmkube/config/0", Some(true)),
                ("/dev/.wasmkube/config/1", Some(true)),
            ]
        );
        assert_eq!(
            g.document.volumes.len(),
            1,
            "config sources are not volumes"
        );
        let config = g.document.config.expect("config");
        assert_eq!(config.values["a"], "1");
        assert_eq!(
            config
                .sources
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            [r#"ConfigMap "cm""#, r#"Secret "s""#]
        );
    }

    #[test]
    fn key_value_stores_get_hidden_volumes_prefixes_and_timeouts() {
        let spec = WasmAppSpec {
            key_value: vec![
                KeyValueSpec {
                    name: "default".into(),
                    redis: Some(RedisStoreSpec {
                        secret_name: "redis".into(),
                        key: None,
                    }),
                    ..KeyValueSpec::default()
                },
                KeyValueSpec {
                    name: "counts".into(),
                    redis: Some(RedisStoreSpec {
                        secret_name: "redis".into(),
                        key: Some("URL".into()),
                    }),
                    shared: Some("visits".into()),
                    timeout_ms: Some(500),
                    ..KeyValueSpec::default()
                },
                KeyValueSpec {
                    name: "local".into(),
                    file: Some(FileStoreSpec {
                        claim_name: "data".into(),
                    }),
                    ..KeyValueSpec::default()
                },
                KeyValueSpec {
                    name: "cache".into(),
                    memory: Some(MemoryStoreSpec {}),
                    ..KeyValueSpec::default()
                },
            ],
            ..WasmAppSpec::default()
        };
        let a = app(spec);
        assert!(has_single_holder_store(&a));
        let g = pod_grants(&a);
        let kv = &g.document.key_value;
        assert_eq!(kv.len(), 4);
        assert_eq!(kv[0].key_prefix, "shop/counter/default/");
        assert_eq!(kv[0].timeout_ms, DEFAULT_KV_TIMEOUT_MS);
        assert_eq!(
            kv[0].backend,
            KeyValueBackend::Redis {
                url_file: "/dev/.wasmkube/kv/0/url".into()
            }
        );
        assert_eq!(kv[1].key_prefix, "shop/shared/visits/");
        assert_eq!(kv[1].timeout_ms, 500);
        assert_eq!(
            kv[2].backend,
            KeyValueBackend::File {
                dir: "/dev/.wasmkube/kv/2".into()
            }
        );
        assert_eq!(kv[3].backend, KeyValueBackend::Memory);
        let names: Vec<&str> = g.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["wasmkube-kv-0", "wasmkube-kv-1", "wasmkube-kv-2"]);
        let items = g.volumes[1]
            .secret
            .as_ref()
            .and_then(|s| s.items.clone())
            .expect("items");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("URL", "url")
        );
        assert_eq!(g.mounts[2].read_only, None, "the database is written");
        assert!(
            g.document.volumes.is_empty(),
            "no store is the guest's to see"
        );
    }
}
