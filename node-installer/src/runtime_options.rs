//! The runtime options CRI hands the shim of a runtime handler, rebuilt from the handler's
//! `options` table as CRI reports it (`Status{verbose}`), so the wasm check
//! ([`crate::wasm_check`]) starts the shim exactly as a pod's container would.

/// The runtime options' type as containerd's CRI sends it to a shim that is not runc.
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// Whether the runtime's options ask the shim for systemd cgroups (then the cgroups path takes
/// systemd's `slice:prefix:name` form, as CRI's does).
pub fn systemd_cgroup(options: Option<&serde_json::Map<String, serde_json::Value>>) -> bool {
    options.is_some_and(|o| {
        o.iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("SystemdCgroup") && v.as_bool() == Some(true))
    })
}

/// containerd's `runtimeoptions.v1.Options`, which CRI sends to every shim that is not runc.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuntimeOptions {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(string, tag = "2")]
    pub config_path: String,
    #[prost(bytes = "vec", tag = "3")]
    pub config_body: Vec<u8>,
}

/// The options CRI derives from the handler's `options` table (containerd's
/// `generateRuntimeOptions`): none without a table; else `runtimeoptions.v1.Options` with the
/// table's `TypeUrl`/`ConfigPath` and, from containerd 1.7 on, the whole table as TOML in
/// `config_body` (1.6 sends no body). `version` is containerd's `(major, minor)`.
pub fn runtime_options(
    options: Option<&serde_json::Map<String, serde_json::Value>>,
    version: Option<(u32, u32)>,
) -> Option<prost_types::Any> {
    let options = options?;
    let field = |name: &str| {
        options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let with_body = version.is_none_or(|v| v >= (1, 7));
    let message = RuntimeOptions {
        type_url: field("TypeUrl"),
        config_path: field("ConfigPath"),
        config_body: if with_body {
            toml_table(options).to_string().into_bytes()
        } else {
            Vec::new()
        },
    };
    Some(prost_types::Any {
        type_url: RUNTIME_OPTIONS_TYPE.to_string(),
        value: prost::Message::encode_to_vec(&message),
    })
}

fn toml_table(map: &serde_json::Map<String, serde_json::Value>) -> toml_edit::DocumentMut {
    let mut doc = toml_edit::DocumentMut::new();
    for (k, v) in map {
        if let Some(item) = toml_item(v) {
            doc.insert(k, item);
        }
    }
    doc
}

fn toml_item(v: &serde_json::Value) -> Option<toml_edit::Item> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Object(m) => {
            let mut t = toml_edit::Table::new();
            for (k, v) in m {
                if let Some(item) = toml_item(v) {
                    t.insert(k, item);
                }
            }
            toml_edit::Item::Table(t)
        }
        other => toml_edit::value(toml_value(other)?),
    })
}

fn toml_value(v: &serde_json::Value) -> Option<toml_edit::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => (*b).into(),
        J::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64()?.into(),
        },
        J::String(s) => s.as_str().into(),
        J::Array(a) => toml_edit::Value::Array(a.iter().filter_map(toml_value).collect()),
        J::Object(m) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, v) in m {
                if let Some(v) = toml_value(v) {
                    t.insert(k, v);
                }
            }
            toml_edit::Value::InlineTable(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn map(json: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(json).expect("json")
    }

    #[test]
    fn runtime_options_follow_cri() {
        assert_eq!(runtime_options(None, Some((2, 4))), None, "no table, none");
        let o = map(r#"{"SystemdCgroup":true,"ConfigPath":"/etc/x.toml","Nested":{"a":[1,2]}}"#);
        let any = runtime_options(Some(&o), Some((2, 4))).expect("options");
        assert_eq!(any.type_url, "runtimeoptions.v1.Options");
        let m = RuntimeOptions::decode(any.value.as_slice()).expect("decode");
        assert_eq!(m.config_path, "/etc/x.toml");
        let body: toml_edit::DocumentMut = String::from_utf8(m.config_body)
            .expect("utf8")
            .parse()
            .expect("toml");
        assert_eq!(body["SystemdCgroup"].as_bool(), Some(true));
        assert_eq!(body["Nested"]["a"].as_array().map(|a| a.len()), Some(2));
        // containerd 1.6 sends the table's type and path, no body.
        let any = runtime_options(Some(&o), Some((1, 6))).expect("options");
        let m = RuntimeOptions::decode(any.value.as_slice()).expect("decode");
        assert!(m.config_body.is_empty());
        assert!(systemd_cgroup(Some(&o)));
        assert!(!systemd_cgroup(Some(&map(r#"{"SystemdCgroup":false}"#))));
        assert!(!systemd_cgroup(None));
    }
}
