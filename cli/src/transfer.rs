//! `wasmkube push` and `wasmkube pull`: the binary's side (arguments, credentials from stdin,
//! what to write); the registry work is [`wasmkube_oci::registry`]'s.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use wasmkube_oci::{
    archive::write_atomically,
    build_archive,
    inspect::read_archive_bytes,
    registry::{self, Credentials, RegistryOptions},
    ImageBlobs, ImagePlatform, ImageRef, Layout, PackOptions, WASM_CONFIG_MEDIA_TYPE,
    WASM_LAYER_MEDIA_TYPE, WASM_MAGIC,
};

pub const PUSH_NOTES: &str = "\
SOURCE is a .wasm file (a core module or a component) or an image archive from `wasmkube pack`
or `wasmkube image build`. A .wasm file is pushed as the CNCF Wasm OCI artifact (config
application/vnd.wasm.config.v0+json, one application/wasm layer: what `wkg oci push` and
`wash push` write) or, with --layout image, as the tar-layer image `wasmkube pack` writes. The
same input always gives the same manifest digest.

Credentials: --username with the password on stdin (--password-stdin), else the Docker config
file's entry for the registry ($DOCKER_CONFIG/config.json or ~/.docker/config.json, credential
helpers included), else anonymous. TLS unless the registry is a loopback address or --insecure.";

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// User name for the registry; the password is read from stdin (--password-stdin)
    #[arg(long, short = 'u', requires = "password_stdin")]
    username: Option<String>,

    /// Read the password from stdin (with --username)
    #[arg(long, requires = "username")]
    password_stdin: bool,

    /// Plain HTTP to a registry that is not a loopback address
    #[arg(long)]
    insecure: bool,
}

impl RegistryArgs {
    fn options(&self) -> anyhow::Result<RegistryOptions> {
        let credentials = match &self.username {
            Some(username) => {
                let mut password = String::new();
                std::io::stdin()
                    .read_to_string(&mut password)
                    .context("cannot read the password from stdin")?;
                let password = password.trim_end_matches(['\n', '\r']).to_owned();
                if password.is_empty() {
                    bail!("--password-stdin: stdin held no password");
                }
                Credentials::Basic {
                    username: username.clone(),
                    password,
                }
            }
            None => Credentials::DockerConfig,
        };
        Ok(RegistryOptions {
            credentials,
            insecure: self.insecure,
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PushLayout {
    /// CNCF Wasm OCI artifact: raw application/wasm layer
    Artifact,
    /// OCI image: the module in a tar+gzip layer (containerd 1.6 and later)
    Image,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// A .wasm file or an image archive (.tar)
    #[arg(value_name = "SOURCE")]
    source: PathBuf,

    /// Where to push, e.g. localhost:5000/hello:v1
    #[arg(value_name = "REF")]
    reference: ImageRef,

    /// How to push a .wasm file
    #[arg(long, value_enum, default_value_t = PushLayout::Artifact)]
    layout: PushLayout,

    /// Image platform OS/ARCH [default: wasip1/wasm] (--layout image only)
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<ImagePlatform>,

    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// What to pull, e.g. localhost:5000/hello:v1
    #[arg(value_name = "REF")]
    reference: ImageRef,

    /// Where to write the module (a Wasm artifact) or the image archive (anything else)
    #[arg(short, long, value_name = "PATH")]
    output: PathBuf,

    #[command(flatten)]
    registry: RegistryArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The image SOURCE stands for: a .wasm packed in memory, or an archive read back.
fn source_image(args: &PushArgs) -> anyhow::Result<ImageBlobs> {
    let bytes = std::fs::read(&args.source)
        .with_context(|| format!("cannot read {}", args.source.display()))?;
    if bytes.starts_with(&WASM_MAGIC) {
        let layout = match args.layout {
            PushLayout::Artifact => Layout::Artifact,
            PushLayout::Image => Layout::Tar,
        };
        if args.platform.is_some() && matches!(layout, Layout::Artifact) {
            bail!("--platform applies to --layout image only (an artifact's platform is wasip1/wasip2 wasm)");
        }
        let name = args.source.file_name().map_or_else(
            || "module.wasm".into(),
            |n| n.to_string_lossy().into_owned(),
        );
        let opts = PackOptions {
            layout,
            platform: args.platform.clone(),
            ..PackOptions::new(args.reference.clone())
        };
        let packed = build_archive(&name, &bytes, &opts)
            .with_context(|| format!("cannot pack {}", args.source.display()))?;
        Ok(read_archive_bytes(&packed.archive, &args.source)?.image)
    } else {
        Ok(read_archive_bytes(&bytes, &args.source)
            .with_context(|| {
                format!(
                    "{} is neither a .wasm file nor an image archive",
                    args.source.display()
                )
            })?
            .image)
    }
}

pub fn run_push(args: PushArgs) -> anyhow::Result<()> {
    let image = source_image(&args)?;
    let options = args.registry.options()?;
    let pushed = runtime()?
        .block_on(registry::push(&image, &args.reference, &options))
        .with_context(|| {
            format!(
                "cannot push {} to {}",
                args.source.display(),
                args.reference
            )
        })?;
    println!(
        "pushed {} manifest {} ({} of {} blobs uploaded)",
        pushed.reference, pushed.manifest_digest, pushed.blobs_uploaded, pushed.blobs_total
    );
    Ok(())
}

/// The module of a Wasm OCI artifact with one wasm layer; `None` for anything else.
fn artifact_module(image: &ImageBlobs) -> anyhow::Result<Option<&[u8]>> {
    let manifest = image.checked_manifest()?;
    if manifest.config().media_type().to_string() != WASM_CONFIG_MEDIA_TYPE {
        return Ok(None);
    }
    match manifest.layers().as_slice() {
        [layer] if layer.media_type().to_string() == WASM_LAYER_MEDIA_TYPE => Ok(image
            .blobs
            .get(&layer.digest().to_string())
            .map(Vec::as_slice)),
        _ => Ok(None),
    }
}

pub fn run_pull(args: PullArgs) -> anyhow::Result<()> {
    let options = args.registry.options()?;
    let image = runtime()?
        .block_on(registry::pull(&args.reference, &options))
        .with_context(|| format!("cannot pull {}", args.reference))?;
    let (bytes, what) = match artifact_module(&image)? {
        Some(module) => (module.to_vec(), "wasm module"),
        None => (
            wasmkube_oci::layout::write_archive(&image, &args.reference)?,
            "image archive",
        ),
    };
    write(&args.output, &bytes)?;
    println!(
        "pulled {} manifest {} -> {} ({what}, {} bytes)",
        args.reference,
        image.manifest_digest(),
        args.output.display(),
        bytes.len()
    );
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomically(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
