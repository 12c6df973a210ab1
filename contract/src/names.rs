//! Names the node installer, the operator, the shim and the test harness must agree on: the
//! containerd runtime the installer registers is the one the RuntimeClass names and the shim
//! answers to, and the cache the installer prepares is the one the shim uses.

/// The CRI runtime handler (containerd's `runtimes.<name>`), also the RuntimeClass's handler.
pub const RUNTIME_HANDLER: &str = "wasmkube";
/// containerd's `runtime_type` for the shim: containerd runs `containerd-shim-wasmkube-v1`.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmkube.v1";
/// The shim binary's file name, as containerd derives it from [`RUNTIME_TYPE`].
pub const SHIM_BINARY: &str = "containerd-shim-wasmkube-v1";
/// The shim's compiled-module cache on the node (root's, 0700).
pub const CACHE_DIR: &str = "/var/lib/wasmkube/cache";

#[cfg(test)]
mod tests {
    #[test]
    fn the_shim_binary_is_what_containerd_derives_from_the_runtime_type() {
        // io.containerd.<name>.<version> → containerd-shim-<name>-<version>
        let parts: Vec<&str> = super::RUNTIME_TYPE.split('.').collect();
        assert_eq!(
            format!("containerd-shim-{}-{}", parts[2], parts[3]),
            super::SHIM_BINARY
        );
    }
}
