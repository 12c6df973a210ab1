//! Serves a `wasi:http/proxy` component over HTTP/1.1 on the pod's port: one pre-instantiated
//! component, a fresh instance (pooling allocator) per request unless the app opts into instance
//! reuse ([`crate::instance_pool`]), graceful stop on SIGTERM.
//!
//! Limits (see [`crate::limits`]): a per-request deadline enforced by epoch interruption (504),
//! a concurrency cap (503 at once, never queued), a header read timeout (slow clients are
//! disconnected) and a body size limit (413). A thread outside the async runtime ticks the
//! engine's epoch every [`EPOCH_TICK`]; at each tick a running guest yields to the executor, so
//! guests that never return cannot starve the accept loop, other requests or the stop signal.
//! A client that disconnects before its response drops the request's task and with it the
//! guest's store.
//!
//! Memory: all request stores draw from one [`MemoryBudget`] (the container's memory limit less
//! the compiled code), so concurrent requests together stay under the limit instead of each
//! having all of it. A request whose growth the budget refuses gets 503 with `retry-after: 1`
//! while other requests hold the memory, or 500 when it alone needs more than the limit allows;
//! either way the body and the log line name the memory limit, and the server keeps serving.
//! A store gives its memory back when it is dropped, on every path a request can end by.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use wasmtime::component::Component;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::budget::{code_size, GuestLimiter, MemoryBudget, MemoryRefusal};
use crate::epoch::EpochTicker;
use crate::error::ShimError;
use crate::http_errors::{plain, retry_later, DeadlineExceeded, RequestError, REUSE_REFUSED};
use crate::instance_pool::{Checkout, InstancePool};
use crate::limited_body::LimitedBody;
use crate::limits::HttpLimits;
use crate::state::{GuestConfig, P2State, DEFAULT_HTTP_ADDR, HTTP_ADDR_ENV};
use crate::stop::StopSignal;

/// How long in-flight requests may take to finish after a stop request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After a stop request, how long open keep-alive connections are left to the client: each
/// response in that time carries `connection: close`, so a busy client closes the connection
/// itself after its answer and reconnects (through the Service, to another pod). Closing an idle
/// keep-alive connection from the server side races with a request the client is sending on it
/// (which then fails: a `read` error in `wrk`); only connections still open after this are.
pub const CLOSE_PHASE: Duration = Duration::from_secs(2);
pub use crate::epoch::EPOCH_TICK;

/// Names of the component's exports.
pub fn exports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// The names of the instances and functions the component imports.
pub fn imports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Whether the component exports `wasi:http/incoming-handler` (the `wasi:http/proxy` world).
pub fn is_http_proxy(engine: &Engine, component: &Component) -> bool {
    exports(engine, component)
        .iter()
        .any(|e| e.starts_with("wasi:http/incoming-handler@"))
}

struct Server {
    pre: ProxyPre<P2State>,
    cfg: GuestConfig,
    limits: HttpLimits,
    /// The wasm memory all request stores share (`None`: the container has no memory limit).
    memory: Option<Arc<MemoryBudget>>,
    /// One permit per request in flight, held until its guest task ends.
    slots: Arc<Semaphore>,
    /// Set when the drain after a stop request timed out: every guest traps at its next tick.
    abort_all: Arc<AtomicBool>,
    /// Ticks the epoch while requests are in flight.
    ticker: EpochTicker,
    /// Set on a stop request: every response closes its connection ([`CLOSE_PHASE`]).
    closing: AtomicBool,
    /// Open client connections.
    connections: std::sync::atomic::AtomicUsize,
    /// Instances kept between requests, when the app opted into reuse.
    pool: Option<Arc<InstancePool<Warm>>>,
}

/// An instance kept for reuse, with its store.
struct Warm {
    store: Store<P2State>,
    proxy: Proxy,
}

/// Serves until a stop request; returns the exit code (0 after a graceful drain).
pub async fn serve(
    engine: &Engine,
    component: &Component,
    cfg: &GuestConfig,
    stop: StopSignal,
) -> Result<i32, ShimError> {
    let addr_text = cfg
        .env(HTTP_ADDR_ENV)
        .unwrap_or(DEFAULT_HTTP_ADDR)
        .to_string();
    let listen_err = |detail: String| ShimError::Listen {
        addr: addr_text.clone(),
        detail,
    };
    let addr: SocketAddr = addr_text.parse().map_err(|e| listen_err(format!("{e}")))?;
    let limits = HttpLimits::from_config(cfg)?;

    let mut linker = wasmtime::component::Linker::<P2State>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(ShimError::setup)?;
    crate::state::add_grants_to_linker(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(ShimError::setup)?;
    let link = |e: wasmtime::Error| ShimError::Link {
        what: cfg.what.clone(),
        detail: format!("{e:#}"),
    };
    let pre = ProxyPre::new(linker.instantiate_pre(component).map_err(link)?).map_err(link)?;
    let memory = MemoryBudget::for_program(cfg.memory_budget, code_size(component.image_range()));
    let slots = Arc::new(Semaphore::new(limits.max_concurrent));
    let ticker = {
        let (slots, engine) = (slots.clone(), engine.clone());
        EpochTicker::start(
            move || engine.increment_epoch(),
            move || slots.available_permits() == limits.max_concurrent,
        )?
    };
    let pool = limits.reuse.map(InstancePool::new);
    if let (Some(pool), Some(memory)) = (&pool, &memory) {
        // Idle instances give their memory back before a request is refused any.
        let pool = Arc::downgrade(pool);
        memory.on_pressure(move || pool.upgrade().is_some_and(|p| p.drop_idle() > 0));
    }
    let _reaper = pool
        .clone()
        .map(|p| AbortOnDrop(Some(tokio::spawn(p.reap_idle()).abort_handle())));
    let server = Arc::new(Server {
        pre,
        cfg: cfg.clone(),
        limits,
        memory,
        slots,
        abort_all: Arc::new(AtomicBool::new(false)),
        ticker,
        closing: AtomicBool::new(false),
        connections: std::sync::atomic::AtomicUsize::new(0),
        pool,
    });

    let listener = crate::listen::bind(addr)
        .and_then(TcpListener::from_std)
        .map_err(|e| listen_err(e.to_string()))?;
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!("wasmkube: serving wasi:http on http://{bound}");
    tracing::info!("wasi:http limits: {limits:?}");
    if let Some(reuse) = limits.reuse {
        eprintln!(
            "wasmkube: instance reuse on: up to {} requests per instance, {} reusable instances, \
             idle ones dropped after {:?}",
            reuse.max_requests, reuse.max_instances, reuse.idle_timeout
        );
    }

    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let stopped = stop.clone().wait();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let conn = http.serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn({
                        let server = server.clone();
                        move |req| {
                            let server = server.clone();
                            async move {
                                let mut resp = server.handle(req).await;
                                if server.closing.load(Ordering::SeqCst) {
                                    resp.headers_mut().insert(
                                        hyper::header::CONNECTION,
                                        hyper::header::HeaderValue::from_static("close"),
                                    );
                                }
                                Ok::<_, Infallible>(resp)
                            }
                        }
                    }),
                );
                let conn = graceful.watch(conn);
                server.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection error: {e}");
                    }
                    server.connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    // Busy keep-alive clients close their connections themselves after their next answer.
    server.closing.store(true, Ordering::SeqCst);
    let phase_end = Instant::now() + CLOSE_PHASE;
    while server.connections.load(Ordering::SeqCst) > 0 && Instant::now() < phase_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every request ends by its deadline, so the drain takes at most that long (or the cap).
    let drain = DRAIN_TIMEOUT.min(limits.request_timeout + Duration::from_secs(1));
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("wasmkube: in-flight requests still running after {drain:?}; stopping them");
        server.abort_all.store(true, Ordering::SeqCst);
    }
    if let Some(pool) = &server.pool {
        pool.drop_idle();
    }
    Ok(0)
}

impl Server {
    async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        if req.body().size_hint().lower() > self.limits.max_body {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return retry_later("too many requests in flight\n");
        };
        self.ticker.busy();
        let method = req.method().clone();
        let uri = req.uri().clone();
        match self.call(req, permit).await {
            Ok(resp) => resp,
            Err(e) => {
                eprintln!("wasmkube: {method} {uri} failed: {e}");
                e.response()
            }
        }
    }

    async fn call(
        &self,
        req: hyper::Request<Incoming>,
        permit: OwnedSemaphorePermit,
    ) -> Result<hyper::Response<HyperOutgoingBody>, RequestError> {
        let timeout = self.limits.request_timeout;
        let deadline = Instant::now() + timeout;
        // A reused instance, or a new store (kept for reuse or not). The limiter lives in the
        // store: dropping the store, however the request ends, gives its memory back to the
        // shared budget; a lease dropped with it retires a reusable instance.
        let checkout = match &self.pool {
            Some(pool) => pool.checkout(),
            None => Checkout::OneShot,
        };
        let (lease, mut store, proxy) = match checkout {
            Checkout::Warm(lease, Warm { mut store, proxy }) => {
                // What wasi:config answers follows the ConfigMaps, as for a fresh instance.
                store.data_mut().config = self.cfg.config.snapshot().to_wasi();
                (Some(lease), store, Some(proxy))
            }
            Checkout::New(lease) => (Some(lease), self.new_store(), None),
            Checkout::OneShot => (None, self.new_store(), None),
        };
        store.set_epoch_deadline(1);
        let abort_all = self.abort_all.clone();
        store.epoch_deadline_callback(move |_| {
            if abort_all.load(Ordering::Relaxed) || Instant::now() >= deadline {
                return Err(wasmtime::Error::new(DeadlineExceeded));
            }
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        let too_large = Arc::new(AtomicBool::new(false));
        let max_body = self.limits.max_body;
        let req = req.map(|body| LimitedBody {
            inner: body,
            seen: 0,
            limit: max_body,
            exceeded: too_large.clone(),
        });
        let classify = |e: wasmtime::Error| {
            if let Some(refusal) = e.downcast_ref::<MemoryRefusal>() {
                RequestError::Memory(*refusal)
            } else if e.downcast_ref::<DeadlineExceeded>().is_some() {
                RequestError::Deadline(timeout)
            } else if too_large.load(Ordering::Relaxed) {
                RequestError::BodyTooLarge(max_body)
            } else {
                RequestError::Guest(e)
            }
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(RequestError::Guest)?;
        // Whether the guest answered: one that returns from `handle` without calling
        // `response-outparam::set` may still hold the outparam (StarlingMonkey's FetchEvent
        // does, on a second request), so its instance is retired, which drops the sender and
        // answers 500 at once, instead of waiting for the deadline.
        let answered = Arc::new(AtomicBool::new(false));
        let out = {
            let answered = answered.clone();
            store
                .data_mut()
                .http()
                .new_response_outparam_from_callback(move |value| {
                    answered.store(true, Ordering::Relaxed);
                    let _ = sender.send(value);
                })
                .map_err(RequestError::Guest)?
        };
        let pre = self.pre.clone();
        // The guest may keep streaming the body after sending headers: run it as its own task,
        // holding the request's slot until it ends (its deadline bounds it).
        let task = tokio::task::spawn(async move {
            let _permit = permit;
            let run = async {
                let proxy = match proxy {
                    Some(proxy) => proxy,
                    None => pre.instantiate_async(&mut store).await?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await?;
                Ok(proxy)
            };
            // The epoch callback stops guests that compute; this stops guests blocked in a
            // host call (a sleep, a read) that never reach a tick.
            let result = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(r) => r,
                Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
            };
            match (result, store.data().limiter.refusal()) {
                // Only an instance whose guest returned an answer is reused; on any error the lease and
                // the store are dropped here, retiring the instance.
                (Ok(proxy), _) => {
                    match lease {
                        Some(lease) if answered.load(Ordering::Relaxed) => {
                            lease.give_back(Warm { store, proxy })
                        }
                        // A reused instance that did not answer: this app cannot serve two
                        // requests on one instance. One 500, then no more reuse.
                        Some(lease) if lease.served() > 0 && lease.pool().disable() => {
                            eprintln!("{REUSE_REFUSED}");
                        }
                        _ => {}
                    }
                    Ok(())
                }
                (Err(e), _) if e.downcast_ref::<DeadlineExceeded>().is_some() => Err(e),
                (Err(_), Some(refusal)) => Err(wasmtime::Error::new(refusal)),
                (Err(e), _) => Err(e),
            }
        });
        // Until the response head exists, a client that goes away (hyper drops this future)
        // takes the guest with it.
        let guard = AbortOnDrop(Some(task.abort_handle()));
        let result = match receiver.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(classify(wasmtime::Error::msg(format!(
                "guest returned error code {code:?}"
            )))),
            Err(_) => match task.await {
                Ok(Ok(())) => Err(RequestError::Guest(wasmtime::Error::msg(
                    "guest never called response-outparam::set",
                ))),
                Ok(Err(e)) => Err(classify(e)),
                Err(e) => Err(RequestError::Guest(wasmtime::Error::msg(format!(
                    "request task failed: {e}"
                )))),
            },
        };
        guard.disarm();
        result
    }
}

impl Server {
    /// A store for a new instance, its memory drawn from the shared budget.
    fn new_store(&self) -> Store<P2State> {
        let limiter = GuestLimiter::new(self.memory.clone());
        let mut store = Store::new(self.pre.engine(), P2State::new(&self.cfg, limiter));
        store.limiter(|s| &mut s.limiter);
        store
    }
}

/// Aborts a task when dropped, unless disarmed.
struct AbortOnDrop(Option<AbortHandle>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}
