//! What `wasi:config/store` answers: the WasmApp's inline values, then each ConfigMap and
//! Secret in order (a later key replaces an earlier one).
//!
//! The sources are volumes the kubelet keeps up to date, mounted under
//! [`wasmkube_contract::CONFIG_MOUNT_ROOT`] where the guest cannot see them (its root is the
//! root view, [`crate::bundle`]). Every instance asks for a [`ConfigStore::snapshot`]: the
//! kubelet replaces a volume's files at once by swapping its `..data` link, so one `readlink`
//! per source tells whether the files must be read again, and an update reaches the next
//! instance without a restart. Values are never logged; messages name the source and key.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use wasmkube_contract::{Config, ConfigSource};
use wasmtime_wasi_config::WasiConfigVariables;

/// The link the kubelet's atomic writer swaps on every update of a ConfigMap or Secret volume.
const DATA_LINK: &str = "..data";

/// The guest's configuration, read again from its sources when they change.
#[derive(Debug, Default)]
pub struct ConfigStore {
    values: BTreeMap<String, String>,
    sources: Vec<ConfigSource>,
    last: Mutex<Option<Snapshot>>,
}

#[derive(Debug)]
struct Snapshot {
    /// Each source's `..data` target when it was read.
    marks: Vec<Option<PathBuf>>,
    vars: Arc<Vars>,
}

/// One snapshot of the configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Vars(pub BTreeMap<String, String>);

impl Vars {
    /// The snapshot as `wasmtime-wasi-config` serves it.
    pub fn to_wasi(&self) -> WasiConfigVariables {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

impl ConfigStore {
    pub fn new(config: Option<&Config>) -> Self {
        ConfigStore {
            values: config.map(|c| c.values.clone()).unwrap_or_default(),
            sources: config.map(|c| c.sources.clone()).unwrap_or_default(),
            last: Mutex::new(None),
        }
    }

    /// Whether anything is configured (else `wasi:config` answers nothing).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.sources.is_empty()
    }

    /// The configuration now: the last one read while no source changed.
    pub fn snapshot(&self) -> Arc<Vars> {
        let marks: Vec<Option<PathBuf>> = self
            .sources
            .iter()
            .map(|s| std::fs::read_link(Path::new(&s.mount_path).join(DATA_LINK)).ok())
            .collect();
        // A source without the kubelet's link (a plain directory) is read every time.
        let cacheable = marks.iter().all(Option::is_some);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = last.as_ref().filter(|s| cacheable && s.marks == marks) {
            return s.vars.clone();
        }
        let vars = Arc::new(self.read());
        *last = Some(Snapshot {
            marks,
            vars: vars.clone(),
        });
        vars
    }

    fn read(&self) -> Vars {
        let mut vars = self.values.clone();
        for source in &self.sources {
            for (key, value) in read_source(source) {
                vars.insert(key, value);
            }
        }
        Vars(vars)
    }
}

/// The keys of one source: each file not starting with `.` (the kubelet's own entries do).
fn read_source(source: &ConfigSource) -> Vec<(String, String)> {
    let dir = Path::new(&source.mount_path);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("wasmkube: config: cannot read {source}: {e}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follows the kubelet's `key -> ..data/key` links.
        match std::fs::read(entry.path()) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(value) => out.push((name, value)),
                Err(_) => eprintln!(
                    "wasmkube: config: key {name:?} of {source} is not UTF-8; wasi:config serves strings only"
                ),
            },
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
            Err(e) => eprintln!("wasmkube: config: cannot read key {name:?} of {source}: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmkube_contract::ConfigSourceKind;
    use wasmkube_test_harness::kubelet::kubelet_volume;

    fn source(kind: ConfigSourceKind, name: &str, dir: &Path) -> ConfigSource {
        ConfigSource {
            kind,
            name: name.into(),
            mount_path: dir.to_string_lossy().into_owned(),
        }
    }

    #[test]
    fn later_sources_win_and_an_update_reaches_the_next_snapshot() {
        let cm = tempfile::tempdir().expect("cm");
        let secret = tempfile::tempdir().expect("secret");
        kubelet_volume(
            cm.path(),
            "..gen1",
            &[("greeting", "hello"), ("color", "blue")],
        );
        kubelet_volume(
            secret.path(),
            "..gen1",
            &[("color", "red"), ("token", "s3cret")],
        );
        let store = ConfigStore::new(Some(&Config {
            values: [
                ("greeting".to_string(), "inline".to_string()),
                ("only-inline".to_string(), "yes".to_string()),
            ]
            .into(),
            sources: vec![
                source(ConfigSourceKind::ConfigMap, "app", cm.path()),
                source(ConfigSourceKind::Secret, "app", secret.path()),
            ],
        }));
        let first = store.snapshot();
        let expect = |pairs: &[(&str, &str)]| {
            Vars(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            *first,
            expect(&[
                ("color", "red"),
                ("greeting", "hello"),
                ("only-inline", "yes"),
                ("token", "s3cret"),
            ])
        );
        assert!(
            Arc::ptr_eq(&first, &store.snapshot()),
            "unchanged sources are not read again"
        );

        kubelet_volume(
            cm.path(),
            "..gen2",
            &[("greeting", "bonjour"), ("color", "blue")],
        );
        let second = store.snapshot();
        assert_eq!(second.0["greeting"], "bonjour");
        assert_eq!(second.0["color"], "red", "the Secret still wins");
    }

    #[test]
    fn a_missing_source_gives_the_rest() {
        let store = ConfigStore::new(Some(&Config {
            values: [("a".to_string(), "1".to_string())].into(),
            sources: vec![source(
                ConfigSourceKind::ConfigMap,
                "gone",
                Path::new("/nonexistent/wasmkube"),
            )],
        }));
        assert_eq!(store.snapshot().0.len(), 1);
        assert!(ConfigStore::new(None).is_empty());
    }
}
