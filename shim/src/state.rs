//! Per-store host state and the guest's view of its container: args, env, preopens, cwd and
//! memory budget, built once from the runwasi context.
use containerd_shim_wasm::sandbox::context::RuntimeContext;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use std::sync::Arc;

use wasmkube_contract::{Grants, GRANTS_ENV};
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::budget::GuestLimiter;
use crate::config::ConfigStore;
use crate::error::ShimError;
use crate::keyvalue::{KvView, Stores};
use crate::outbound::hooks::OutboundHooks;
use crate::outbound::Policy;
use crate::preopens::{Granted, Preopen};

/// A `NAME=value` pair of the container's environment.
type EnvVar = (String, String);

/// Environment variable (in the container) with the address wasi:http apps listen on.
pub const HTTP_ADDR_ENV: &str = "WASMKUBE_HTTP_ADDR";
/// Default listen address for wasi:http apps: every address, IPv6 and IPv4 (see
/// [`crate::listen`]).
pub const DEFAULT_HTTP_ADDR: &str = "[::]:8080";

/// What the guest sees of its container.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// A name for messages: the module path or image layer.
    pub what: String,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    pub cwd: Option<String>,
    /// Bytes of wasm memory (compiled code and every store's linear memory together) the
    /// container's memory limit leaves; see [`crate::budget::MemoryBudget`].
    pub memory_budget: Option<usize>,
    /// What the guest may reach on the network (`spec.outbound`).
    pub outbound: Arc<Policy>,
    /// What `wasi:config` answers (`spec.config`).
    pub config: Arc<ConfigStore>,
    /// The stores `wasi:keyvalue` opens (`spec.keyValue`).
    pub key_value: Arc<Stores>,
}

impl GuestConfig {
    /// Reads args and env from runwasi's context and the rest from inside the container. The
    /// grants document ([`GRANTS_ENV`]) is taken out of the guest's environment; a malformed one
    /// stops the container with a message naming it.
    pub fn from_context(ctx: &impl RuntimeContext, what: String) -> Result<Self, ShimError> {
        let mut args: Vec<String> = ctx.args().to_vec();
        if let Some(arg0) = args.first_mut() {
            // `module.wasm#func` selects an export; the guest's argv[0] is the path.
            if let Some((path, _)) = arg0.split_once('#') {
                *arg0 = path.to_string();
            }
        }
        let (grants, envs): (Vec<EnvVar>, Vec<EnvVar>) = ctx
            .envs()
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .partition(|(k, _)| k == GRANTS_ENV);
        let has_grants = !grants.is_empty();
        let grants = match grants.last() {
            Some((_, text)) => Grants::from_env_value(text).map_err(|e| ShimError::Config {
                var: GRANTS_ENV.into(),
                value: "(the grants document)".into(),
                detail: e.to_string(),
            })?,
            None => Grants::none(),
        };
        let outbound = Arc::new(Policy::new(grants.outbound.as_ref())?);
        // A WasmApp's pod (it carries the document) sees the volumes it grants, nothing else.
        let granted = if has_grants {
            Granted::Volumes(&grants.volumes)
        } else {
            Granted::EveryMount
        };
        let preopens = crate::preopens::discover(granted).map_err(ShimError::Setup)?;
        let config = Arc::new(ConfigStore::new(grants.config.as_ref()));
        let key_value = Arc::new(Stores::new(&grants.key_value));
        let cwd = std::env::current_dir()
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p != "/");
        let memory_budget = crate::memory::container_memory()
            .map(|(limit, usage)| crate::memory::store_budget(limit, usage));
        Ok(GuestConfig {
            what,
            args,
            envs,
            preopens,
            cwd,
            memory_budget,
            outbound,
            config,
            key_value,
        })
    }

    /// The value of a container environment variable.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.envs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A WASI context builder with stdio, args, env, preopens and cwd.
    pub fn wasi_builder(&self) -> WasiCtxBuilder {
        let mut b = WasiCtxBuilder::new();
        let policy = self.outbound.clone();
        b.inherit_stdio()
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(self.outbound.allows_lookups())
            .socket_addr_check(move |addr, use_| {
                let policy = policy.clone();
                Box::pin(async move {
                    match use_ {
                        // Local ends (binding, also the implicit bind before a connect, and
                        // listening) and what arrives: not outbound.
                        SocketAddrUse::TcpBind
                        | SocketAddrUse::TcpListen
                        | SocketAddrUse::TcpAccept
                        | SocketAddrUse::UdpBind
                        | SocketAddrUse::UdpReceive => true,
                        SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend => {
                            // Resolving a granted name runs on its own task: the check's
                            // future must be Sync.
                            tokio::spawn(async move { policy.allows_socket(addr).await })
                                .await
                                .unwrap_or(false)
                        }
                    }
                })
            });
        b.args(&self.args).envs(&self.envs);
        // `.` first: it must not shadow `/` (see `preopens::guest_dirs`).
        for d in crate::preopens::guest_dirs(&self.preopens, self.cwd.as_deref()) {
            let perms = if d.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            if let Err(e) = b.preopened_dir(&d.host, &d.guest, perms) {
                tracing::warn!("cannot preopen {} as {}: {e}", d.host, d.guest);
            }
        }
        if let Some(cwd) = &self.cwd {
            b.initial_cwd(cwd);
        }
        b
    }
}

/// Store state for preview1 modules.
pub struct P1State {
    pub wasi: WasiP1Ctx,
    pub limiter: GuestLimiter,
}

/// Store state for components (CLI and HTTP).
pub struct P2State {
    pub wasi: WasiCtx,
    /// This instance's `wasi:config` answers, read when it was made.
    pub config: WasiConfigVariables,
    /// The container's key-value stores.
    pub kv: Arc<Stores>,
    pub http: WasiHttpCtx,
    pub http_hooks: OutboundHooks,
    pub table: ResourceTable,
    pub limiter: GuestLimiter,
}

impl P2State {
    /// A store's state, its memory drawn through `limiter`.
    pub fn new(cfg: &GuestConfig, limiter: GuestLimiter) -> Self {
        P2State {
            wasi: cfg.wasi_builder().build(),
            config: cfg.config.snapshot().to_wasi(),
            kv: cfg.key_value.clone(),
            http: WasiHttpCtx::new(),
            http_hooks: OutboundHooks {
                policy: cfg.outbound.clone(),
            },
            table: ResourceTable::new(),
            limiter,
        }
    }
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for P2State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// Adds what a WasmApp grants beyond WASI 0.2 to a component linker: `wasi:config/store`,
/// answering from the instance's snapshot, and `wasi:keyvalue` on the container's stores.
pub fn add_grants_to_linker(
    linker: &mut wasmtime::component::Linker<P2State>,
) -> Result<(), ShimError> {
    wasmtime_wasi_config::add_to_linker(linker, |s: &mut P2State| {
        wasmtime_wasi_config::WasiConfig::from(&s.config)
    })
    .map_err(ShimError::setup)?;
    crate::keyvalue::add_to_linker(linker, |s: &mut P2State| KvView {
        stores: &s.kv,
        table: &mut s.table,
    })
    .map_err(ShimError::setup)
}
