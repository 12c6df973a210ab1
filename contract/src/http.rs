//! How a WasmApp's `spec.http` reaches the shim: environment variables of the container, which
//! the operator writes from the spec and the shim reads when its wasi:http server starts (a user
//! running pods by hand may set them too). The shim refuses a malformed value with a message
//! naming the variable.

/// Opt-in instance reuse: set (to the most requests one instance serves, at least 1) turns reuse
/// on; absent, every request gets a fresh instance.
pub const REUSE_MAX_REQUESTS_ENV: &str = "WASMKUBE_HTTP_REUSE_MAX_REQUESTS";
/// The most reusable instances alive at once (idle or serving); a request that finds none idle
/// while this many live gets a fresh instance of its own, dropped after it.
pub const REUSE_MAX_CONCURRENT_ENV: &str = "WASMKUBE_HTTP_REUSE_MAX_CONCURRENT";
/// How long an idle reusable instance is kept (`30s`, `500ms`, or seconds).
pub const REUSE_IDLE_TIMEOUT_ENV: &str = "WASMKUBE_HTTP_REUSE_IDLE_TIMEOUT";

/// Every variable above: the operator owns them when the spec sets `http.instanceReuse`.
pub const REUSE_ENVS: [&str; 3] = [
    REUSE_MAX_REQUESTS_ENV,
    REUSE_MAX_CONCURRENT_ENV,
    REUSE_IDLE_TIMEOUT_ENV,
];
