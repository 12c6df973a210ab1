//! wasmkube's containerd shim: runs WASI preview1 modules, preview2 `wasi:cli/run` components and
//! `wasi:http/proxy` components with Wasmtime, on runwasi's `containerd-shim-wasm` library.
//!
//! Code map: [`shim`] plugs into runwasi; [`engine`] configures Wasmtime; [`broker`] compiles
//! code outside the container and keeps it in [`cache`]; [`descriptors`] closes the host
//! handles a container process inherits; [`command`] runs modules and CLI components; [`http`]
//! serves wasi:http within [`limits`] and the shared memory [`budget`], reusing instances from
//! [`instance_pool`] when the app opts in; [`cgroup`], [`memory`],
//! [`cpu`], [`preopens`] and [`stop`] turn the container's cgroup, mounts and signals into store
//! limits, defaults, WASI preopens and epoch interruption; [`privileges`] gives the guest
//! process the capabilities an exec would have left it; [`listen`] binds the wasi:http socket;
//! [`bundle`] gives the guest a root without the container's mounts, [`config`] serves
//! `wasi:config` from the WasmApp's ConfigMaps and Secrets, [`keyvalue`] serves
//! `wasi:keyvalue` on the stores it grants, and [`spin`] picks a Spin app's component.

pub mod broker;
pub mod budget;
pub mod bundle;
pub mod cache;
pub mod cgroup;
pub mod command;
pub mod config;
pub mod cpu;
pub mod descriptors;
pub mod engine;
pub mod epoch;
pub mod error;
pub mod http;
mod http_errors;
pub mod instance_pool;
pub mod keyvalue;
pub mod limited_body;
pub mod limits;
pub mod listen;
pub mod memory;
pub mod outbound;
pub mod preopens;
pub mod privileges;
pub mod shim;
pub mod spin;
pub mod state;
pub mod stop;

pub use shim::{WasmkubeSandbox, WasmkubeShim};
