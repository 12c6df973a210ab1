//! The contract between the operator, which turns a WasmApp's spec into pods, and the shim, which
//! enforces in each pod what the spec grants. Both sides use these types, so the document one
//! writes is the document the other reads.
//!
//! How the grants travel: the operator writes one JSON [`Grants`] document into the pod
//! template's environment as [`GRANTS_ENV`]. The shim reads it from the container's environment
//! and removes it before the guest starts, so the guest can neither read nor change it (a
//! guest's environment is what WASI hands it, nothing else). Only whoever may create the pod
//! sets it; that person can already run any container in the namespace, and a grant only ever
//! narrows what a wasm pod may do: a wasm pod without the document has no grants at all.
pub mod grants;
pub mod host_grant;
pub mod http;
pub mod installer;
pub mod names;

pub use grants::{
    Config, ConfigSource, ConfigSourceKind, Grants, KeyValueBackend, KeyValueStore, Outbound,
    Volume, CONFIG_MOUNT_ROOT, GRANTS_API_VERSION, GRANTS_ENV, KEY_VALUE_MOUNT_ROOT,
};
pub use host_grant::{HostGrant, HostGrantError, HostPattern, PortPattern};
