//! The wasmkube operator: the `WasmApp` CRD, the app controller (Deployment, Service, HPA,
//! status) and the node controller (installer DaemonSets, RuntimeClass, node state label).

pub use wasmkube_api::{crd, names};

pub mod app_controller;
pub mod backoff;
pub mod builders;
pub mod cluster_objects;
pub mod drain;
mod error;
pub mod events;
pub mod install_failure;
pub mod installer_result;
pub mod installer_runs;
pub mod leader;
pub mod listen;
pub mod metrics;
pub mod node_controller;
pub mod node_state;
pub mod pod_index;
pub mod pod_problems;
pub mod rollout;
pub mod run;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod watch_health;

#[cfg(test)]
mod app_scenarios;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod node_scenarios;

pub use error::{Error, Result};
