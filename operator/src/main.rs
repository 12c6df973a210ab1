//! `wasmkube-operator`: `run` (default) the controllers, or print the `crd`.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use wasmkube_operator::{
    builders::installer::{daemonset, runtime_class, InstallerAction, InstallerConfig},
    crd,
    drain::DrainPolicy,
    install_failure::DEFAULT_MAX_INSTALL_ATTEMPTS,
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
    /// Address of /metrics, /healthz and /readyz (`[::]` takes IPv4 too; IPv4 only without IPv6)
    #[arg(long, env = "WASMKUBE_LISTEN", default_value = "[::]:8080")]
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
    /// Nodes that install (and restart containerd) at once: the opt-in rollout's slots and the
    /// installer DaemonSets' maxUnavailable. k3s/rke2 servers go one at a time regardless
    #[arg(long, env = "WASMKUBE_MAX_CONCURRENT_INSTALLS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_installs: u16,
    /// Attempts of one installer pod before a failure the installer may pass on retry makes the
    /// node `failed` (until then it stays `pending`, the attempt in
    /// wasmkube.dev/runtime-attempts); a permanent failure is `failed` at once
    #[arg(long, env = "WASMKUBE_MAX_INSTALL_ATTEMPTS", default_value_t = DEFAULT_MAX_INSTALL_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_install_attempts: u32,
    /// Seconds an installer run waits for another run's host lock (/run/wasmkube/installer.lock)
    /// before it fails with `Locked` (retried) [default: the installer's, 120]
    #[arg(long, env = "WASMKUBE_INSTALLER_LOCK_TIMEOUT")]
    installer_lock_timeout: Option<u64>,
    /// PriorityClass of the installer pods (manifests/ ships wasmkube-node-critical)
    #[arg(long, env = "WASMKUBE_INSTALLER_PRIORITY_CLASS", default_value = names::INSTALLER_PRIORITY_CLASS)]
    installer_priority_class: String,
    /// Wasm pods on a node being opted out: `evict` them (PodDisruptionBudgets honoured) or
    /// `wait` until their owners move them
    #[arg(long, env = "WASMKUBE_DRAIN", default_value = "evict")]
    drain: DrainPolicy,
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

fn installer_config(args: &RunArgs) -> anyhow::Result<InstallerConfig> {
    Ok(InstallerConfig {
        namespace: args.namespace.clone(),
        image: args.installer_image.clone(),
        shim_path: args.installer_shim.clone(),
        restart: args.installer_restart.clone(),
        max_concurrent_installs: args.max_concurrent_installs,
        priority_class: args.installer_priority_class.clone(),
        drain: args.drain,
        lock_timeout: args.installer_lock_timeout,
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
        max_install_attempts: args.max_install_attempts,
    };
    run(cfg).await
}
