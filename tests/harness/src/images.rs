//! OCI image archives for tests: packed wasm guests (through `wasmkube pack`'s library) and a
//! locally built static pause image for the CRI sandbox.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use wasmkube_oci::{ImageRef, PackOptions};

/// Packs `module` as `reference` into `archive` (tar layout, the default).
pub fn pack(module: &Path, reference: &str, archive: &Path) {
    let reference = ImageRef::parse(reference).expect("image reference");
    wasmkube_oci::pack(module, archive, &PackOptions::new(reference)).expect("wasmkube pack");
}

/// An OCI archive of the pause image named [`crate::containerd::PAUSE_IMAGE`], built once.
pub fn pause_archive() -> &'static Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wk-pause-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/pause.c");
        let bin = dir.join("pause");
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .map_err(|e| format!("cannot run gcc (apt-get install -y gcc libc6-dev): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "gcc -static pause.c failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let bytes = std::fs::read(&bin).map_err(|e| e.to_string())?;
        let reference =
            ImageRef::parse(crate::containerd::PAUSE_IMAGE).map_err(|e| e.to_string())?;
        let archive = wasmkube_oci::build_native_archive("pause", &bytes, &reference)
            .map_err(|e| e.to_string())?;
        let path = dir.join("pause.tar");
        std::fs::write(&path, archive).map_err(|e| e.to_string())?;
        Ok(path)
    })
}
