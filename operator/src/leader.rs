//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), so two replicas
//! never both write.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};
use tracing::info;

use crate::{Error, Result};

/// Lease name in the operator's namespace.
pub const LEASE_NAME: &str = "wasmkube-operator";
/// How long a lease stays valid without renewal.
pub const LEASE_SECONDS: u64 = 15;
/// Renew this long before expiry.
pub const GRACE_SECONDS: u64 = 5;

/// A running lease manager.
pub struct Leadership {
    is_leader: watch::Receiver<bool>,
    task: JoinHandle<std::result::Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Starts competing for the lease as `identity` (the pod name).
    pub async fn start(client: Client, namespace: &str, identity: &str) -> Result<Self> {
        let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(GRACE_SECONDS)
            .with_field_manager(format!("{}-lease", crate::names::FIELD_MANAGER))
            .build()
            .await
            .map_err(|e| Error::Lease(e.to_string()))?;
        let (is_leader, task) = manager.watch().await;
        Ok(Leadership { is_leader, task })
    }

    /// Resolves once this replica holds the lease.
    pub async fn acquired(&mut self) -> Result<()> {
        self.is_leader
            .wait_for(|leader| *leader)
            .await
            .map_err(|_| Error::Lease("lease manager stopped".to_string()))?;
        info!("acquired the leader lease");
        Ok(())
    }

    /// Resolves when this replica no longer holds the lease.
    pub async fn lost(&mut self) {
        let _ = self.is_leader.wait_for(|leader| !*leader).await;
    }

    /// Gives the lease up so a standby takes over at once rather than after expiry.
    pub async fn release(self) {
        drop(self.is_leader);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => info!("released the leader lease"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "cannot release the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "lease task failed"),
            Err(_) => tracing::warn!("timed out releasing the lease"),
        }
    }
}
