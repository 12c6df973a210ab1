//! `wasmkube-operator run`: endpoint, leader election, both controllers, graceful shutdown.

use std::{net::SocketAddr, sync::Arc};

use kube::{runtime::events::Reporter, Client};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    app_controller, builders::installer::InstallerConfig, events::Recorder, leader::Leadership,
    metrics::Metrics, names, node_controller, server,
};

/// Resolves once `rx` reads true.
fn stopped(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + use<> {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// How a term as leader ended.
enum Term {
    /// SIGTERM: the process exits.
    Terminated,
    /// The lease went to nobody or another replica: back to standby.
    LostLease,
    /// A controller task ended on its own.
    Crashed,
}

/// Runs the controllers as the leader until SIGTERM, the lease is lost or a controller ends;
/// then stops them (in-flight reconciles finish, at most 20 s) before returning.
async fn lead_until_done(
    cfg: &RunConfig,
    client: &Client,
    metrics: &Metrics,
    leadership: Option<&mut Leadership>,
) -> Term {
    metrics.leader.set(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reporter = Reporter {
        controller: names::MANAGED_BY.to_string(),
        instance: Some(cfg.pod_name.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let mut tasks = tokio::task::JoinSet::new();
    if cfg.app_controller {
        let ctx = Arc::new(app_controller::Context::new(
            client.clone(),
            recorder.clone(),
            metrics.clone(),
        ));
        tasks.spawn(app_controller::run(ctx, stopped(&stop_rx)));
    }
    if cfg.node_controller {
        tasks.spawn(node_controller::keep_cluster_objects(
            client.clone(),
            cfg.installer.clone(),
            metrics.clone(),
            stopped(&stop_rx),
        ));
        tasks.spawn(node_controller::run(
            client.clone(),
            recorder,
            metrics.clone(),
            cfg.installer.clone(),
            cfg.max_install_attempts,
            stopped(&stop_rx),
        ));
    }
    // Tells /readyz when the API server is back for watches that restart without a word.
    tasks.spawn(crate::watch_health::probe_api(
        client.clone(),
        metrics.watches.clone(),
        stopped(&stop_rx),
    ));
    let lost = async {
        match leadership {
            Some(l) => l.lost().await,
            None => futures::future::pending().await,
        }
    };
    let term = tokio::select! {
        _ = termination() => {
            info!("SIGTERM: finishing in-flight reconciles");
            Term::Terminated
        }
        _ = lost => {
            error!("lost the leader lease: stopping the controllers");
            Term::LostLease
        }
        _ = tasks.join_next() => Term::Crashed,
    };
    let _ = stop_tx.send(true);
    // Controllers drain in-flight reconciles on the stop signal.
    let drain = async { while let Some(_done) = tasks.join_next().await {} };
    if tokio::time::timeout(std::time::Duration::from_secs(20), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    metrics.leader.set(0);
    term
}

/// Settings of a running operator.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub namespace: String,
    pub pod_name: String,
    pub listen: SocketAddr,
    pub leader_elect: bool,
    pub app_controller: bool,
    pub node_controller: bool,
    pub installer: InstallerConfig,
    /// `--max-install-attempts` (see [`crate::install_failure`]).
    pub max_install_attempts: u32,
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs until SIGTERM (exit 0) or until a controller stops unexpectedly (error). A leader that
/// loses its lease (the API server unreachable for longer than the lease, or another replica
/// took it over) stops its controllers, finishing in-flight reconciles, and competes again as a
/// standby: no process restart, and never two replicas writing at once.
pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let mut registry = Registry::default();
    let metrics = Metrics::default().register(&mut registry);
    // `/readyz` also checks the watches the leader's controllers register there.
    let health = server::Health::new(registry, metrics.watches.clone());

    let listener = crate::listen::bind(cfg.listen).await?;
    info!(addr = %cfg.listen, "serving /metrics, /healthz, /readyz");
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = tokio::spawn({
        let app = server::router(health.clone());
        let stopped = stopped(&stop_rx);
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
    });

    let mut leadership = if cfg.leader_elect {
        Some(Leadership::start(client.clone(), &cfg.namespace, &cfg.pod_name).await?)
    } else {
        None
    };
    // A standby is healthy and ready: it is doing its job, which is to wait. It registers no
    // watches, so its readiness stays this flag.
    health.set_ready(true);

    let result = loop {
        let leader = async {
            match leadership.as_mut() {
                Some(l) => l.acquired().await,
                None => Ok(()),
            }
        };
        let lead = tokio::select! {
            r = leader => r,
            _ = termination() => {
                info!("terminating as a standby");
                break Ok(());
            }
        };
        if let Err(e) = lead {
            break Err(e.into());
        }
        match lead_until_done(&cfg, &client, &metrics, leadership.as_mut()).await {
            Term::Terminated => break Ok(()),
            Term::Crashed => break Err(anyhow::anyhow!("a controller stopped unexpectedly")),
            Term::LostLease => {
                // Back to standby: no watches of ours are left to judge readiness by.
                metrics.watches.clear();
                warn!("lost the leader lease; controllers stopped, competing again as a standby");
            }
        }
    };
    health.set_ready(false);
    if let Some(l) = leadership {
        l.release().await;
    }
    let _ = stop_tx.send(true);
    let _ = http.await;
    result
}
