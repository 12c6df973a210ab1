//! A Spin app image in the layout `spin registry push` writes (Spin's OCI client,
//! `push_locked_core`): an OCI image config with architecture `wasm` and the locked app's digest
//! as a label, the component as an `application/vnd.wasm.content.layer.v1+wasm` layer and the
//! locked app as an `application/vnd.fermyon.spin.application.v1+config` layer naming the
//! component's layer by digest. The Spin CLI is not on crates.io, so tests assemble it here.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use wasmkube_oci::ImageBlobs;

pub const LOCKED_APP_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(bytes), "size": bytes.len()})
}

/// A Spin app of one component `wasm` (id `hello`) behind one trigger of `trigger_type`, with
/// `env` as its `environment`.
pub fn spin_image(wasm: &[u8], trigger_type: &str, env: &[(&str, &str)]) -> ImageBlobs {
    let env: BTreeMap<&str, &str> = env.iter().copied().collect();
    let locked = serde_json::to_vec(&json!({
        "spin_lock_version": 0,
        "metadata": {"name": "hello", "version": "0.1.0", "trigger": {"type": trigger_type}},
        "triggers": [{"id": "trigger--hello", "trigger_type": trigger_type,
                      "trigger_config": {"component": "hello", "route": "/..."}}],
        "components": [{"id": "hello",
                        "source": {"content_type": "application/wasm", "digest": digest(wasm)},
                        "env": env}]
    }))
    .expect("locked app JSON");
    let config = serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Labels": {"com.fermyon.spin.lockedAppDigest": digest(&locked)}},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .expect("config JSON");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor(WASM_LAYER_MEDIA_TYPE, wasm), descriptor(LOCKED_APP_MEDIA_TYPE, &locked)]
    }))
    .expect("manifest JSON");
    let blobs = [config, wasm.to_vec(), locked]
        .into_iter()
        .map(|b| (digest(&b), b))
        .collect();
    ImageBlobs {
        manifest,
        manifest_media_type: MANIFEST.into(),
        platform: None,
        blobs,
    }
}
