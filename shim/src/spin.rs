//! Spin applications as `spin registry push` writes them: a standard image config (architecture
//! `wasm`), one `application/vnd.wasm.content.layer.v1+wasm` layer per component and the locked
//! app (`spin.lock`) as an `application/vnd.fermyon.spin.application.v1+config` layer, naming
//! each component's layer by digest. wasmkube runs such an app when it is one component behind
//! HTTP triggers, with no static files, dependencies or host requirements; the component's
//! Spin-only imports are refused after loading ([`spin_only_imports`]). Anything else stops the
//! container with a message naming what the app needs, never a crash with no reason.

use serde_json::{Map, Value};

/// The locked app's layer.
pub const LOCKED_APP_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";
/// A component's wasm.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// A static file a component mounts (`files` in spin.toml).
pub const DATA_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+data";
/// Static files packed in one archive (`SPIN_OCI_ARCHIVE_LAYERS`).
pub const ARCHIVE_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.bundle.v1.tar+gzip";

/// Interface prefixes only Spin's host provides.
const SPIN_ONLY: &[&str] = &["fermyon:spin/", "spin:"];

/// A layer of the image as the shim got it: media type and digest.
#[derive(Debug, Clone, Copy)]
pub struct LayerRef<'a> {
    pub media_type: &'a str,
    pub digest: &'a str,
}

/// The component to run and what the app asked for that wasmkube gives differently.
#[derive(Debug, PartialEq, Eq)]
pub struct Selected {
    /// The component's id in spin.toml.
    pub component: String,
    /// Index of its wasm layer in the layers given to [`select`].
    pub layer: usize,
    /// The component's `environment`, given to the guest under the container's own env.
    pub env: Vec<(String, String)>,
    /// One line each for what is not applied (routes, outbound hosts), for the container log.
    pub notes: Vec<String>,
}

/// Why a Spin app cannot run here: printed on the container's stderr.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Spin app: {0}")]
pub struct SpinError(pub String);

/// Whether the image is a Spin app (it carries a locked app layer).
pub fn locked_app_layer(layers: &[LayerRef<'_>]) -> Option<usize> {
    layers
        .iter()
        .position(|l| l.media_type == LOCKED_APP_MEDIA_TYPE)
}

/// Picks the component to run from the locked app `locked` and the image's `layers`.
pub fn select(locked: &[u8], layers: &[LayerRef<'_>]) -> Result<Selected, SpinError> {
    let fail = |m: String| Err(SpinError(m));
    let app: Value = serde_json::from_slice(locked).map_err(|e| {
        SpinError(format!(
            "the locked app ({LOCKED_APP_MEDIA_TYPE}) is not JSON: {e}"
        ))
    })?;
    let empty = Map::new();
    let obj = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
    let list = |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
    let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>().join(", ");

    let host_requirements = obj(app.get("host_requirements"));
    let required: Map<String, Value> = host_requirements
        .into_iter()
        .filter(|(_, v)| v.as_str() != Some("optional"))
        .collect();
    if !required.is_empty() {
        return fail(format!(
            "it requires host features wasmkube does not provide: {}",
            keys(&required)
        ));
    }
    let triggers = list(app.get("triggers"));
    let mut http_components = Vec::new();
    for t in &triggers {
        let kind = t.get("trigger_type").and_then(Value::as_str).unwrap_or("?");
        let id = t.get("id").and_then(Value::as_str).unwrap_or("?");
        if kind != "http" {
            return fail(format!(
                "trigger {id:?} is of type {kind:?}: wasmkube runs Spin apps behind HTTP triggers only"
            ));
        }
        let component = t
            .get("trigger_config")
            .and_then(|c| c.get("component"))
            .and_then(Value::as_str);
        match component {
            Some(c) => http_components.push(c.to_string()),
            None => {
                return fail(format!(
                    "HTTP trigger {id:?} names no component (redirects and static responses are Spin's own)"
                ))
            }
        }
    }
    let components = list(app.get("components"));
    let ids: Vec<&str> = components
        .iter()
        .map(|c| c.get("id").and_then(Value::as_str).unwrap_or("?"))
        .collect();
    http_components.sort();
    http_components.dedup();
    if components.len() != 1 || http_components.len() != 1 {
        return fail(format!(
            "it has {} components ({}) behind {} HTTP trigger(s): wasmkube runs a Spin app of a \
             single wasi:http component (split it into one WasmApp per component)",
            components.len(),
            ids.join(", "),
            triggers.len()
        ));
    }
    let component = &components[0];
    let id = ids[0].to_string();
    if http_components[0] != id {
        return fail(format!(
            "its HTTP trigger names component {:?}, which the app does not have",
            http_components[0]
        ));
    }
    if !list(component.get("files")).is_empty() {
        return fail(format!(
            "component {id:?} mounts static files ({DATA_LAYER_MEDIA_TYPE} or \
             {ARCHIVE_LAYER_MEDIA_TYPE} layers), which wasmkube does not provide: give the files \
             as spec.volumes"
        ));
    }
    let dependencies = obj(component.get("dependencies"));
    if !dependencies.is_empty() {
        return fail(format!(
            "component {id:?} has uncomposed dependencies ({}): push it with `spin registry push` \
             (which composes them) or compose it with `wac`",
            keys(&dependencies)
        ));
    }
    let source = component.get("source").unwrap_or(&Value::Null);
    let Some(digest) = source.get("digest").and_then(Value::as_str) else {
        return fail(format!(
            "component {id:?} has no source digest (an app must be pushed with `spin registry push`, \
             not built from spin.toml)"
        ));
    };
    let Some(layer) = layers
        .iter()
        .position(|l| l.digest == digest && l.media_type == WASM_LAYER_MEDIA_TYPE)
    else {
        return fail(format!(
            "component {id:?} is layer {digest}, which the image does not carry as \
             {WASM_LAYER_MEDIA_TYPE}"
        ));
    };

    let mut env: Vec<(String, String)> = obj(component.get("env"))
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
        .collect();
    env.sort();
    let mut notes = Vec::new();
    let metadata = component
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let hosts = list(metadata.get("allowed_outbound_hosts"));
    if !hosts.is_empty() {
        let hosts: Vec<&str> = hosts.iter().filter_map(Value::as_str).collect();
        notes.push(format!(
            "Spin app component {id:?} lists allowed_outbound_hosts [{}]: wasmkube grants only \
             the WasmApp's spec.outbound",
            hosts.join(", ")
        ));
    }
    let routes: Vec<String> = triggers
        .iter()
        .filter_map(|t| {
            t.get("trigger_config")?
                .get("route")?
                .as_str()
                .map(String::from)
        })
        .filter(|r| r != "/..." && r != "/")
        .collect();
    if !routes.is_empty() {
        notes.push(format!(
            "Spin app route(s) {} not applied: wasmkube sends every path to component {id:?}",
            routes.join(", ")
        ));
    }
    Ok(Selected {
        component: id,
        layer,
        env,
        notes,
    })
}

/// The imports of a component (names from its type) that only Spin's host provides.
pub fn spin_only_imports<'a>(imports: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    imports
        .into_iter()
        .filter(|name| SPIN_ONLY.iter().any(|p| name.starts_with(p)))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WASM: &str = "sha256:aaaa";
    const LOCK: &str = "sha256:bbbb";

    fn layers() -> Vec<LayerRef<'static>> {
        vec![
            LayerRef {
                media_type: WASM_LAYER_MEDIA_TYPE,
                digest: WASM,
            },
            LayerRef {
                media_type: LOCKED_APP_MEDIA_TYPE,
                digest: LOCK,
            },
        ]
    }

    /// A locked app as `spin registry push` writes it, with one HTTP component.
    fn app() -> Value {
        json!({
            "spin_lock_version": 1,
            "metadata": {"name": "hello", "trigger": {"type": "http"}},
            "triggers": [{"id": "trigger--hello", "trigger_type": "http",
                          "trigger_config": {"component": "hello", "route": "/..."}}],
            "components": [{"id": "hello",
                            "metadata": {"allowed_outbound_hosts": ["https://example.com"]},
                            "source": {"content_type": "application/wasm", "digest": WASM},
                            "env": {"GREETING": "hi"}}]
        })
    }

    fn select_json(app: &Value) -> Result<Selected, SpinError> {
        select(&serde_json::to_vec(app).expect("json"), &layers())
    }

    fn err(app: &Value) -> String {
        select_json(app).expect_err("refused").to_string()
    }

    #[test]
    fn one_http_component_is_selected_with_its_env_and_notes() {
        let selected = select_json(&app()).expect("selected");
        assert_eq!(selected.component, "hello");
        assert_eq!(selected.layer, 0);
        assert_eq!(selected.env, vec![("GREETING".into(), "hi".into())]);
        assert_eq!(selected.notes.len(), 1, "{:?}", selected.notes);
        assert!(selected.notes[0].contains("https://example.com"));
        assert_eq!(locked_app_layer(&layers()), Some(1));
    }

    #[test]
    fn what_wasmkube_cannot_give_is_named() {
        let mut redis = app();
        redis["triggers"][0]["trigger_type"] = json!("redis");
        assert!(err(&redis).contains("of type \"redis\""), "{}", err(&redis));

        let mut two = app();
        let mut second = two["components"][0].clone();
        second["id"] = json!("other");
        two["components"].as_array_mut().expect("list").push(second);
        assert!(
            err(&two).contains("2 components (hello, other)"),
            "{}",
            err(&two)
        );

        let mut files = app();
        files["components"][0]["files"] = json!([{"digest": "sha256:cccc", "path": "/a.txt"}]);
        assert!(
            err(&files).contains(DATA_LAYER_MEDIA_TYPE),
            "{}",
            err(&files)
        );

        let mut chaining = app();
        chaining["host_requirements"] = json!({"local_service_chaining": "required"});
        assert!(err(&chaining).contains("local_service_chaining"));
        chaining["host_requirements"] = json!({"local_service_chaining": "optional"});
        assert!(select_json(&chaining).is_ok());

        let mut elsewhere = app();
        elsewhere["components"][0]["source"]["digest"] = json!("sha256:dddd");
        assert!(
            err(&elsewhere).contains("sha256:dddd"),
            "{}",
            err(&elsewhere)
        );
        assert!(err(&elsewhere).contains(WASM_LAYER_MEDIA_TYPE));

        let garbage = select(b"not json", &layers()).expect_err("refused");
        assert!(garbage.to_string().contains(LOCKED_APP_MEDIA_TYPE));
    }

    #[test]
    fn spin_only_imports_are_picked_out() {
        let imports = [
            "wasi:http/types@0.2.0",
            "fermyon:spin/variables@2.0.0",
            "spin:postgres/postgres@3.0.0",
            "wasi:keyvalue/store@0.2.0-draft",
        ];
        assert_eq!(
            spin_only_imports(imports),
            vec![
                "fermyon:spin/variables@2.0.0",
                "spin:postgres/postgres@3.0.0"
            ]
        );
    }
}
