//! The runwasi plug-in: shim name and version, and the sandbox that runs one guest.
use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source};
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::shim::{version, Shim, Version};

use crate::engine::{self, Program};
use crate::error::ShimError;
use crate::state::GuestConfig;
use crate::stop::StopSignal;

/// `containerd-shim-wasmkube-v1`.
pub struct WasmkubeShim;

impl Shim for WasmkubeShim {
    type Sandbox = WasmkubeSandbox;

    fn name() -> &'static str {
        "wasmkube"
    }

    fn version() -> Version {
        version!()
    }
}

/// Runs one wasm container (the guest process inside the container's namespaces).
pub struct WasmkubeSandbox;

/// runwasi makes the sandbox in the container's init process, after libcontainer switched to
/// the spec's user and before the first thread starts (the async runtime comes up right after,
/// for `can_handle`): the one point where a capability change reaches every thread the guest
/// will run on. See [`crate::privileges`].
impl Default for WasmkubeSandbox {
    fn default() -> Self {
        crate::privileges::drop_for_guest();
        WasmkubeSandbox
    }
}

impl Sandbox for WasmkubeSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> anyhow::Result<i32> {
        Ok(match run(ctx).await {
            Ok(code) => code,
            Err(err) => {
                // The container's stderr: `ctr` output, `kubectl logs`.
                eprintln!("wasmkube: {err}");
                err.exit_code()
            }
        })
    }

    /// Accept every non-native entrypoint: a missing or invalid module is reported by
    /// `run_wasi` on the container's stderr with a precise message and exit code, which is
    /// where `kubectl logs` shows it, instead of an opaque create-task error.
    async fn can_handle(&self, _ctx: &impl RuntimeContext) -> anyhow::Result<()> {
        async move { Ok(()) }.await
    }
}

async fn run(ctx: &impl RuntimeContext) -> Result<i32, ShimError> {
    if let Some(why) = crate::privileges::drop_failure() {
        return Err(ShimError::Setup(format!(
            "cannot lower the guest's capabilities to what an exec would leave: {why}"
        )));
    }
    let entry = ctx.entrypoint();
    let (what, bytes) = match &entry.source {
        Source::File(path) => {
            if path.as_os_str().is_empty() {
                return Err(ShimError::NotFound(
                    "(no entrypoint in the OCI spec)".into(),
                ));
            }
            let bytes = entry.source.as_bytes().map_err(|e| {
                let io = e.downcast::<std::io::Error>();
                match io {
                    Ok(source) => ShimError::Read {
                        path: path.clone(),
                        source,
                    },
                    Err(_) => ShimError::NotFound(path.clone()),
                }
            })?;
            (path.display().to_string(), bytes)
        }
        Source::Oci(layers) => {
            let what = layers
                .first()
                .map(|l| l.config.digest().to_string())
                .unwrap_or_default();
            let bytes = entry.source.as_bytes().map_err(|e| ShimError::Invalid {
                what: what.clone(),
                detail: e.to_string(),
            })?;
            (format!("image layer {what}"), bytes)
        }
    };
    let cfg = GuestConfig::from_context(ctx, what);
    let stop = StopSignal::install().map_err(ShimError::setup)?;
    // Only a process that may write the host's cache directory uses it (root containers): a
    // non-root guest neither reads other containers' artefacts nor leaves its own there.
    let cache = crate::host::cache_dir()
        .filter(|dir| crate::cache::usable(*dir))
        .map(crate::cache::ArtifactCache::new);
    let (engine, program) = engine::load_with_engine(&cfg.what, &bytes, cache)?;
    drop(bytes);
    match program {
        Program::Module(module) => {
            stop.interrupt_on_stop(engine.clone());
            crate::command::run_module(&engine, &module, &cfg, &entry.func).await
        }
        Program::Component(component) => {
            if crate::http::is_http_proxy(&engine, &component) {
                crate::http::serve(&engine, &component, &cfg, stop).await
            } else if crate::http::exports(&engine, &component)
                .iter()
                .any(|e| e.starts_with("wasi:cli/run@"))
            {
                stop.interrupt_on_stop(engine.clone());
                crate::command::run_component(&engine, &component, &cfg).await
            } else {
                Err(ShimError::UnsupportedComponent {
                    what: cfg.what.clone(),
                    exports: crate::http::exports(&engine, &component).join(", "),
                })
            }
        }
    }
}
