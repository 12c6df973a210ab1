//! What can go wrong running a guest, and the exit code each outcome maps to.
//!
//! Exit codes follow shell conventions so `kubectl get pods` and alerting read naturally:
//! 126 = found but cannot be run (not wasm, invalid, unknown import), 127 = module not found,
//! 134 = wasm trap (as `wasmtime run`), 137 = memory limit (as an OOM kill), 128+N = stopped
//! by signal N.
use std::path::PathBuf;

/// Exit code when the module cannot be found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when the module exists but cannot be compiled, linked or served.
pub const EXIT_CANNOT_RUN: i32 = 126;
/// Exit code for a wasm trap.
pub const EXIT_TRAP: i32 = 134;
/// Exit code when the guest grows past the container's memory limit.
pub const EXIT_MEMORY_LIMIT: i32 = 137;

/// Errors that stop a guest before or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("module not found: {0}")]
    NotFound(PathBuf),
    #[error("cannot read module {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not a WebAssembly module or component (it starts with {magic})")]
    NotWasm { what: String, magic: String },
    #[error("{what} is a precompiled Wasmtime artefact; images must carry portable .wasm")]
    Precompiled { what: String },
    #[error("invalid WebAssembly in {what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("cannot instantiate {what}: {detail}")]
    Link { what: String, detail: String },
    #[error(
        "{what} exports neither wasi:cli/run nor wasi:http/incoming-handler (exports: {exports})"
    )]
    UnsupportedComponent { what: String, exports: String },
    #[error(transparent)]
    Spin(#[from] crate::spin::SpinError),
    #[error(
        "{what} imports {imports}, which only Spin's host provides: wasmkube gives components \
         WASI interfaces (wasi:http, wasi:config for variables, wasi:keyvalue, wasi:sockets)"
    )]
    SpinImports { what: String, imports: String },
    #[error("{what} has no exported function `{func}`")]
    NoEntry { what: String, func: String },
    #[error("cannot serve wasi:http on {addr}: {detail}")]
    Listen { addr: String, detail: String },
    #[error("invalid {var}={value:?}: {detail}")]
    Config {
        var: String,
        value: String,
        detail: String,
    },
    #[error("wasm trap: {0}")]
    Trap(String),
    #[error(
        "guest exceeded the memory limit: it asked for {desired} bytes but the container's limit \
         leaves {limit} bytes for wasm memory (OCI linux.resources.memory.limit)"
    )]
    MemoryLimit { desired: usize, limit: usize },
    #[error("runtime error: {0}")]
    Runtime(String),
    #[error("wasmtime setup failed: {0}")]
    Setup(String),
}

impl ShimError {
    /// The container exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ShimError::NotFound(_) => EXIT_NOT_FOUND,
            ShimError::Read { .. }
            | ShimError::NotWasm { .. }
            | ShimError::Precompiled { .. }
            | ShimError::Invalid { .. }
            | ShimError::Link { .. }
            | ShimError::UnsupportedComponent { .. }
            | ShimError::Spin(_)
            | ShimError::SpinImports { .. }
            | ShimError::NoEntry { .. }
            | ShimError::Listen { .. }
            | ShimError::Config { .. }
            | ShimError::Setup(_) => EXIT_CANNOT_RUN,
            ShimError::Trap(_) | ShimError::Runtime(_) => EXIT_TRAP,
            ShimError::MemoryLimit { .. } => EXIT_MEMORY_LIMIT,
        }
    }

    pub(crate) fn setup(err: impl std::fmt::Display) -> Self {
        ShimError::Setup(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_conventions() {
        assert_eq!(ShimError::NotFound("/x.wasm".into()).exit_code(), 127);
        let not_wasm = ShimError::NotWasm {
            what: "/x".into(),
            magic: "7f454c46".into(),
        };
        assert_eq!(not_wasm.exit_code(), 126);
        assert_eq!(ShimError::Trap("unreachable".into()).exit_code(), 134);
        assert_eq!(
            ShimError::MemoryLimit {
                desired: 2,
                limit: 1
            }
            .exit_code(),
            137
        );
    }

    #[test]
    fn messages_name_the_cause() {
        let e = ShimError::Link {
            what: "/app.wasm".into(),
            detail: "unknown import: `env::foo`".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot instantiate /app.wasm: unknown import: `env::foo`"
        );
    }
}
