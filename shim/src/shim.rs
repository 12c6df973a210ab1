//! The runwasi plug-in: shim name and version, and the sandbox that runs one guest.
use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source, WasmLayer};
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::shim::{Shim, Version};

use std::borrow::Cow;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use crate::broker::{client::ClientError, protocol::Response};
use crate::descriptors::Inherited;
use crate::engine::{self, Program};
use crate::error::ShimError;
use crate::spin::LayerRef;
use crate::state::GuestConfig;
use crate::stop::StopSignal;

/// `containerd-shim-wasmkube-v1`.
pub struct WasmkubeShim;

impl Shim for WasmkubeShim {
    type Sandbox = WasmkubeSandbox;

    fn name() -> &'static str {
        "wasmkube"
    }

    /// runwasi's `version!()` also embeds `git describe --dirty` through the `git-version`
    /// macro, which makes the crate depend on `.git/index`, and running it refreshes that very
    /// file: every later cargo command then rebuilds the shim (scripts/build.sh's one build).
    /// The revision is left out as runwasi does without git; the node installer reports the
    /// shim's sha256, which names the binary exactly.
    /// The container is built from a copy of its spec with the guest's root view (see
    /// [`crate::bundle`]).
    fn container_bundle(
        _id: &str,
        bundle: &std::path::Path,
    ) -> anyhow::Result<Option<std::path::PathBuf>> {
        Ok(crate::bundle::container_bundle(bundle)?)
    }

    /// runwasi's layer types, and a Spin app's (see [`crate::spin`]).
    fn supported_layers_types() -> &'static [&'static str] {
        &[
            "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
            "application/wasm",
            crate::spin::WASM_LAYER_MEDIA_TYPE,
            crate::spin::LOCKED_APP_MEDIA_TYPE,
        ]
    }

    fn version() -> Version {
        Version {
            version: env!("CARGO_PKG_VERSION"),
            revision: "<none>",
        }
    }
}

/// Runs one wasm container (the guest process inside the container's namespaces).
pub struct WasmkubeSandbox;

/// runwasi makes the sandbox in the container's init process, after libcontainer switched to
/// the spec's user and before the first thread starts (the async runtime comes up right after,
/// for `can_handle`): the one point where a capability change reaches every thread the guest
/// will run on. See [`crate::privileges`].
///
/// The same single-threaded point is where the descriptors the process inherited are listed,
/// to be closed before the guest is loaded (see [`crate::descriptors`]): libcontainer still
/// needs its own until it starts the payload, runwasi's async runtime does not exist yet.
impl Default for WasmkubeSandbox {
    fn default() -> Self {
        crate::privileges::drop_for_guest();
        let _ = INHERITED.set(Inherited::list());
        WasmkubeSandbox
    }
}

/// What the container process held when the sandbox was made.
static INHERITED: OnceLock<Result<Inherited, String>> = OnceLock::new();

/// Retires every inherited descriptor but stdio and the compile broker's client socket; fails
/// (the guest does not start) when they could not be listed.
fn close_inherited() -> Result<(), ShimError> {
    let inherited = match INHERITED.get() {
        Some(Ok(inherited)) => inherited,
        Some(Err(e)) => {
            return Err(ShimError::Setup(format!(
                "not starting the guest: {e}, so inherited descriptors cannot be closed"
            )))
        }
        None => {
            return Err(ShimError::Setup(
                "not starting the guest: its inherited descriptors were never listed".into(),
            ))
        }
    };
    let keep: Vec<i32> = crate::broker::socket()
        .map(|fd| fd.as_raw_fd())
        .into_iter()
        .collect();
    let retired = inherited.retire_all_but(&keep);
    if !retired.is_empty() {
        tracing::debug!(?retired, "retired inherited descriptors");
    }
    Ok(())
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
    close_inherited()?;
    if let Some(why) = crate::privileges::drop_failure() {
        return Err(ShimError::Setup(format!(
            "cannot lower the guest's capabilities to what an exec would leave: {why}"
        )));
    }
    let entry = ctx.entrypoint();
    // A Spin app's component environment (spin.toml `environment`).
    let mut spin_env = Vec::new();
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
        Source::Oci(layers) => oci_source(layers, &mut spin_env)?,
    };
    let stop = StopSignal::install().map_err(ShimError::setup)?;
    let (engine, program) = match load(&what, bytes.into_owned(), stop.clone()).await? {
        Loaded::Ready(engine, program) => (engine, program),
        Loaded::Stopped(signo) => return Ok(128 + signo),
    };
    // After loading, so the memory already used (the compiled code) counts against the budget.
    let mut cfg = GuestConfig::from_context(ctx, what)?;
    // The container's own env (the WasmApp's spec.env) wins over the Spin app's.
    for (k, v) in spin_env {
        if !cfg.envs.iter().any(|(have, _)| *have == k) {
            cfg.envs.push((k, v));
        }
    }
    match program {
        Program::Module(module) => {
            stop.interrupt_on_stop(engine.clone());
            crate::command::run_module(&engine, &module, &cfg, &entry.func).await
        }
        Program::Component(component) => {
            let spin_only = crate::spin::spin_only_imports(
                crate::http::imports(&engine, &component)
                    .iter()
                    .map(String::as_str),
            );
            if !spin_only.is_empty() {
                return Err(ShimError::SpinImports {
                    what: cfg.what.clone(),
                    imports: spin_only.join(", "),
                });
            }
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

/// The module in the image's wasm layers: the only one, or a Spin app's component (see
/// [`crate::spin`]), whose environment goes to `spin_env`.
fn oci_source<'a>(
    layers: &'a [WasmLayer],
    spin_env: &mut Vec<(String, String)>,
) -> Result<(String, Cow<'a, [u8]>), ShimError> {
    let kinds: Vec<(String, String)> = layers
        .iter()
        .map(|l| {
            (
                l.config.media_type().to_string(),
                l.config.digest().to_string(),
            )
        })
        .collect();
    let refs: Vec<LayerRef<'_>> = kinds
        .iter()
        .map(|(media_type, digest)| LayerRef { media_type, digest })
        .collect();
    if let Some(locked) = crate::spin::locked_app_layer(&refs) {
        let selected = crate::spin::select(&layers[locked].layer, &refs)?;
        for note in &selected.notes {
            eprintln!("wasmkube: {note}");
        }
        *spin_env = selected.env;
        let what = format!(
            "Spin component {:?} (image layer {})",
            selected.component, kinds[selected.layer].1
        );
        return Ok((what, Cow::Borrowed(&layers[selected.layer].layer)));
    }
    match layers {
        [layer] => Ok((
            format!("image layer {}", kinds[0].1),
            Cow::Borrowed(&layer.layer),
        )),
        _ => Err(ShimError::Invalid {
            what: "the image".into(),
            detail: format!(
                "{} wasm layers ({}) and no Spin locked app ({}) to say which to run",
                layers.len(),
                kinds
                    .iter()
                    .map(|(m, d)| format!("{m} {d}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::spin::LOCKED_APP_MEDIA_TYPE
            ),
        }),
    }
}

/// A loaded program, or the stop request that came first.
enum Loaded {
    Ready(wasmtime::Engine, Program),
    Stopped(i32),
}

/// Gets the compiled program from the compile broker (see [`crate::broker`]), or compiles it
/// in this process when the broker cannot help, saying why on the container's stderr.
async fn load(what: &str, bytes: Vec<u8>, stop: StopSignal) -> Result<Loaded, ShimError> {
    // Refuse what is not portable wasm before anyone compiles anything.
    engine::kind_of(what, &bytes)?;
    let (bytes, answer) = crate::broker::client::load(what.to_string(), bytes, stop).await;
    let why = match answer {
        Ok(Response::Loaded {
            allocation,
            tier,
            kind,
            artefact,
            notes,
        }) => {
            for note in notes {
                eprintln!("wasmkube: {note}");
            }
            let engine = engine::new_engine_for(allocation, tier)?;
            match engine::load_artefact(&engine, kind, artefact) {
                Ok(program) => return Ok(Loaded::Ready(engine, program)),
                Err(e) => format!("the broker's artefact does not load: {e:#}"),
            }
        }
        Ok(Response::Invalid { detail }) => {
            return Err(ShimError::Invalid {
                what: what.to_string(),
                detail,
            })
        }
        Ok(Response::Limits(_)) => ClientError::Unexpected.to_string(),
        Err(ClientError::Stopped(signo)) => return Ok(Loaded::Stopped(signo)),
        Err(e) => e.to_string(),
    };
    eprintln!("wasmkube: compiling in the container process, without the cache: {why}");
    let bytes = bytes.ok_or(ShimError::Setup(why))?;
    let (engine, program) = engine::load_in_process(what, &bytes)?;
    Ok(Loaded::Ready(engine, program))
}
