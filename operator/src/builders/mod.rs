//! Pure functions from desired state to Kubernetes objects: a WasmApp's children come from
//! [`wasmkube_api::builders`], the installer DaemonSets are the operator's own.

pub use wasmkube_api::builders::{app, grants};
pub mod installer;
