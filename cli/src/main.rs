//! `wasmkube`: pack wasm into OCI images, push and pull them, build native images from a
//! Dockerfile subset, render WasmApp manifests.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use wasmkube_oci::{
    archive::write_atomically, build_image, inspect::inspect, pack, ImagePlatform, ImageRef,
    Layout, PackOptions,
};

mod transfer;

#[derive(Debug, Parser)]
#[command(name = "wasmkube", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pack a .wasm module or component into an OCI image archive
    #[command(after_long_help = PACK_NOTES)]
    Pack(PackArgs),
    /// Build or inspect native (linux) images without Docker
    #[command(subcommand)]
    Image(ImageCommand),
    /// Push a .wasm file or an image archive to a registry
    #[command(after_long_help = transfer::PUSH_NOTES)]
    Push(transfer::PushArgs),
    /// Pull an image: the module itself for a Wasm artifact, an image archive otherwise
    Pull(transfer::PullArgs),
    /// Print the objects the operator would apply for the WasmApps in a file (YAML, `---` separated)
    Render(RenderArgs),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build an image archive from a Dockerfile subset and a context of prebuilt files
    #[command(after_long_help = BUILD_NOTES)]
    Build(BuildArgs),
    /// Print an image archive's name, manifest digest, platform and sizes
    Inspect(InspectArgs),
}

const BUILD_NOTES: &str = "\
The Dockerfile subset:
  FROM scratch (first, once); COPY [--chmod=OCTAL] SRC... DEST (plain or JSON form; files and
  directories, a directory's symlinks are kept); ENTRYPOINT and CMD in JSON form; USER;
  ENV KEY=VALUE...; WORKDIR; LABEL KEY=VALUE...; comments and \\ continuations.
  Anything else (RUN, ADD, ARG, a base image, shell form, $VARIABLES, wildcards, other COPY
  flags) is refused with its line number, so `docker build` of the same file and context
  gives the same files.

The archive has one gzipped tar layer: mtimes 0, owners 0:0, modes from the context files or
--chmod, sorted entries. The same inputs always give a byte-identical archive. Load it with
  ctr -n k8s.io images import --all-platforms IMAGE.tar      or
  kind load image-archive IMAGE.tar";

#[derive(Debug, Args)]
struct BuildArgs {
    /// The Dockerfile
    #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
    dockerfile: PathBuf,

    /// The build context: the directory COPY sources are relative to
    #[arg(long, value_name = "DIR")]
    context: PathBuf,

    /// Image reference, e.g. docker.io/wasmkube/operator:0.1.0
    #[arg(long, value_name = "REF")]
    name: ImageRef,

    /// Where to write the image archive
    #[arg(short, long, value_name = "IMAGE.tar")]
    output: PathBuf,

    /// Image platform OS/ARCH
    #[arg(long, value_name = "OS/ARCH", default_value = "linux/amd64")]
    platform: ImagePlatform,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The image archive (an OCI image layout in a tar)
    #[arg(value_name = "IMAGE.tar")]
    archive: PathBuf,

    /// Also list every layer entry: kind, mode, owner, size, path
    #[arg(long)]
    files: bool,
}

#[derive(Debug, Args)]
struct RenderArgs {
    /// File with one or more WasmApps (YAML; other kinds are skipped); `-` reads stdin
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
}

const PACK_NOTES: &str = "\
Loading the archive:
  The archive is an OCI image layout in a tar (oci-layout, index.json, blobs/sha256/...).
  index.json names the image (io.containerd.image.name = the normalised REF).

  Its platform is not the host's (wasip1/wasm by default), so containerd 1.6 needs
      ctr images import --all-platforms IMAGE.tar
  (without the flag the import stops with \"image might be filtered out\"); then
      ctr run --runtime io.containerd.wasmkube.v1 REF ID
  runs it. `kind load image-archive IMAGE.tar` imports with --all-platforms itself.

  --layout artifact writes the CNCF Wasm OCI artifact (config application/vnd.wasm.config.v0+json,
  one raw application/wasm layer). containerd 1.6 cannot import it as an archive (\"mismatched
  image rootfs and manifest layers\"; only `--no-unpack` stores it); push it to a registry
  instead (`wasmkube push`), from which the CRI of containerd 1.6 and later pulls it and the
  shim reads the module from its layer (a WasmApp running it needs spec.args: the artifact has
  no entrypoint). It carries no --arg, --env or --platform: its platform is wasip1/wasm for a
  module and wasip2/wasm for a component.

The same inputs always give a byte-identical archive.";

#[derive(Debug, Args)]
struct PackArgs {
    /// The WebAssembly binary (core module or component)
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,

    /// Image reference; `hello` becomes docker.io/library/hello:latest
    #[arg(long, value_name = "REF")]
    name: ImageRef,

    /// Where to write the image archive
    #[arg(short, long, value_name = "IMAGE.tar")]
    output: PathBuf,

    /// Image form
    #[arg(long, value_enum, default_value_t = LayoutArg::Tar)]
    layout: LayoutArg,

    /// Image platform OS/ARCH [default: wasip1/wasm] (tar layout only)
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<ImagePlatform>,

    /// Argument passed to the module (image Cmd); repeat for more
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,

    /// Environment variable KEY=VALUE (image Env); repeat for more
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LayoutArg {
    /// OCI image, module at /<file name> in a tar+gzip layer (containerd 1.6 and later)
    Tar,
    /// Wasm OCI artifact, raw application/wasm layer (newer containerd only)
    Artifact,
}

impl From<LayoutArg> for Layout {
    fn from(arg: LayoutArg) -> Self {
        match arg {
            LayoutArg::Tar => Layout::Tar,
            LayoutArg::Artifact => Layout::Artifact,
        }
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Pack(args) => run_pack(args),
        Command::Image(ImageCommand::Build(args)) => run_build(args),
        Command::Image(ImageCommand::Inspect(args)) => run_inspect(args),
        Command::Push(args) => transfer::run_push(args),
        Command::Pull(args) => transfer::run_pull(args),
        Command::Render(args) => run_render(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line with the whole cause chain; no backtrace for user errors.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_render(args: RenderArgs) -> anyhow::Result<()> {
    let input = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let out = wasmkube_cli::render::render(&input)
        .with_context(|| format!("cannot render {}", args.file.display()))?;
    print!("{out}");
    Ok(())
}

fn run_pack(args: PackArgs) -> anyhow::Result<()> {
    let opts = PackOptions {
        reference: args.name,
        layout: args.layout.into(),
        platform: args.platform,
        args: args.args,
        env: args.env,
    };
    let packed = pack(&args.file, &args.output, &opts).with_context(|| {
        format!(
            "cannot pack {} as {} ({} layout) into {}",
            args.file.display(),
            opts.reference,
            opts.layout,
            args.output.display()
        )
    })?;
    println!("{packed}");
    Ok(())
}

fn run_build(args: BuildArgs) -> anyhow::Result<()> {
    let context = || {
        format!(
            "cannot build {} from {} (context {})",
            args.name,
            args.dockerfile.display(),
            args.context.display()
        )
    };
    let image = build_image(&args.dockerfile, &args.context, &args.name, &args.platform)
        .with_context(context)?;
    write_atomically(&args.output, &image.archive)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "built {} ({}) -> {} manifest {}, {} bytes ({} bytes unpacked, {} entries)",
        image.reference,
        image.platform,
        args.output.display(),
        image.manifest_digest,
        image.archive.len(),
        image.content_size,
        image.entries
    );
    Ok(())
}

fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let summary = inspect(&args.archive)?;
    println!(
        "{} manifest {} platform {} archive {} bytes content {} bytes",
        summary.reference.as_deref().unwrap_or("-"),
        summary.manifest_digest,
        summary.platform.as_deref().unwrap_or("-"),
        summary.archive_size,
        summary.content_size
    );
    if args.files {
        for file in &summary.files {
            println!("{file}");
        }
    }
    Ok(())
}
