//! The crate's one error type.

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// A spec the schema let through but the operator cannot act on.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// An object lacks a field the API server always sets (name, namespace).
    #[error("object is missing {0}")]
    MissingField(&'static str),

    /// (De)serialising an object failed.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),

    /// A watch cache the reconcile depends on is gone.
    #[error("cache: {0}")]
    Cache(&'static str),

    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(String),
}

impl Error {
    /// A short, bounded label for the `errors` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::MissingField(_) => "missing_field",
            Error::Serialization(_) => "serialization",
            Error::Lease(_) => "lease",
            Error::Cache(_) => "cache",
        }
    }
}

impl From<wasmkube_api::BuildError> for Error {
    fn from(e: wasmkube_api::BuildError) -> Self {
        match e {
            wasmkube_api::BuildError::InvalidSpec(message) => Error::InvalidSpec(message),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
