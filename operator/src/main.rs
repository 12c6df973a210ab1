//! `wasmkube-operator`: `run` (default) the controllers, or print the `crd`.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wasmkube_operator::{
    builders::installer::{daemonset, runtime_class, InstallerAction, InstallerConfig},
    crd,
    names::{self, installer},
    run::{run, RunConfig},
    telemetry::{self, LogFormat},
};

#[derive(Debug, Parser)]
#[command(name = "wasmkube-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers (the default)
    Run(Box<RunArgs>),
    /// Print the WasmApp CustomResourceDefinition as YAML (what crds/wasmapp.yaml holds)
    Crd,
    /// Print the installer DaemonSets and the RuntimeClass the node controller applies
    Installer(Box<RunArgs>),
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Namespace of the operator, its Lease and the installer DaemonSets
    #[arg(long, env = "POD_NAMESPACE", default_value = names::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Identity in the leader Lease and in Events
    #[arg(long, env = "POD_NAME", default_value = "wasmkube-operator")]
    pod_name: String,
    /// Address of /metrics, /healthz and /readyz
    #[arg(long, env = "WASMKUBE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Compete for the leader Lease before writing anything
    #[arg(long, env = "WASMKUBE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Run the WasmApp controller
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    app_controller: bool,
    /// Run the node controller (installer DaemonSets, RuntimeClass, node labels)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    node_controller: bool,
    /// Node installer image (bundles the shim)
    #[arg(long, env = "WASMKUBE_INSTALLER_IMAGE", default_value = installer::DEFAULT_IMAGE)]
    installer_image: String,
    /// Path of the shim inside the installer image [default: the installer's, beside its binary]
    #[arg(long, env = "WASMKUBE_INSTALLER_SHIM")]
    installer_shim: Option<String>,
    /// containerd restart mode passed to the installer (auto, systemd, none)
    #[arg(long, env = "WASMKUBE_INSTALLER_RESTART", default_value = "auto")]
    installer_restart: String,
    /// Nodes provisioned at once during an installer rollout: a number or a percentage
    #[arg(long, env = "WASMKUBE_INSTALLER_MAX_UNAVAILABLE", default_value = "1")]
    installer_max_unavailable: String,
    /// Log format
    #[arg(long, env = "WASMKUBE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax)
    #[arg(
        long,
        env = "RUST_LOG",
        default_value = "info,kube=warn,kube_lease_manager=warn"
    )]
    log_filter: String,
}

fn int_or_string(s: &str) -> anyhow::Result<IntOrString> {
    if let Some(pct) = s.strip_suffix('%') {
        let n: u32 = pct
            .parse()
            .with_context(|| format!("bad percentage {s:?}"))?;
        anyhow::ensure!((1..=100).contains(&n), "percentage {s:?} must be 1%..100%");
        Ok(IntOrString::String(s.to_string()))
    } else {
        let n: i32 = s.parse().with_context(|| format!("bad number {s:?}"))?;
        anyhow::ensure!(n >= 1, "maxUnavailable must be at least 1");
        Ok(IntOrString::Int(n))
    }
}

fn installer_config(args: &RunArgs) -> anyhow::Result<InstallerConfig> {
    Ok(InstallerConfig {
        namespace: args.namespace.clone(),
        image: args.installer_image.clone(),
        shim_path: args.installer_shim.clone(),
        restart: args.installer_restart.clone(),
        max_unavailable: int_or_string(&args.installer_max_unavailable)
            .context("--installer-max-unavailable")?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Crd) => {
            print!("{}", crd::crd_yaml()?);
            return Ok(());
        }
        Some(Command::Installer(args)) => {
            let cfg = installer_config(&args)?;
            let docs = [
                serde_yaml::to_string(&daemonset(&cfg, InstallerAction::Install))?,
                serde_yaml::to_string(&daemonset(&cfg, InstallerAction::Uninstall))?,
                serde_yaml::to_string(&runtime_class())?,
            ];
            print!("{}", docs.join("---\n"));
            return Ok(());
        }
        Some(Command::Run(args)) => *args,
        None => cli.run,
    };
    telemetry::init(args.log_format, &args.log_filter)?;
    let cfg = RunConfig {
        installer: installer_config(&args)?,
        namespace: args.namespace,
        pod_name: args.pod_name,
        listen: args.listen,
        leader_elect: args.leader_elect,
        app_controller: args.app_controller,
        node_controller: args.node_controller,
    };
    run(cfg).await
}
