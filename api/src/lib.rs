//! wasmkube's Kubernetes API: the `WasmApp` custom resource ([`crd`]), the names, labels and
//! annotations the operator, the installer and the tests share ([`names`]), and the pure builders
//! of a WasmApp's children ([`builders`]). The operator and the `wasmkube` CLI both use it; it
//! links no controller runtime, HTTP server or metrics, so `wasmkube render` does not either.

pub mod builders;
pub mod crd;
pub mod names;

/// Why a WasmApp's children cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A spec the schema let through but no Deployment can be made of.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
}
