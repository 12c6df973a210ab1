//! Serves a `wasi:http/proxy` component over HTTP/1.1 on the pod's port: one pre-instantiated
//! component, a fresh instance (pooling allocator) per request, graceful stop on SIGTERM.
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
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
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
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::budget::{code_size, GuestLimiter, MemoryBudget, MemoryRefusal};
use crate::error::ShimError;
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
/// How often the engine's epoch advances: running guests yield and check their deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

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

/// Why a request got no response from the guest.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("request deadline of {0:?} exceeded")]
    Deadline(Duration),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error(transparent)]
    Memory(MemoryRefusal),
    #[error("{0:#}")]
    Guest(wasmtime::Error),
}

/// The trap raised in a guest that ran past its deadline (or was stopped after the drain).
#[derive(Debug, thiserror::Error)]
#[error("request deadline exceeded")]
struct DeadlineExceeded;

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
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on its own OS thread (so a busy async
/// runtime cannot hold deadlines back) while a request is in flight, until dropped. An idle
/// server's ticker sleeps on a condition variable instead: a node with hundreds of idle wasm
/// pods would otherwise spend its CPU on 100 wake-ups a second per pod (measured by
/// bench/cluster.sh: 400 idle pods kept 2 cores busy). Nothing needs the epoch while no store
/// exists: a store's deadline counts from the epoch at its creation.
struct EpochTicker(Arc<TickerState>);

struct TickerState {
    done: AtomicBool,
    /// Held while deciding to sleep and while waking, so no wake-up is lost in between.
    lock: std::sync::Mutex<()>,
    wake: std::sync::Condvar,
}

impl EpochTicker {
    /// Calls `tick` (advance the engine's epoch) every [`EPOCH_TICK`] while `idle` (no request
    /// in flight) is false.
    fn start(
        tick: impl Fn() + Send + 'static,
        idle: impl Fn() -> bool + Send + 'static,
    ) -> Result<Self, ShimError> {
        let state = Arc::new(TickerState {
            done: AtomicBool::new(false),
            lock: std::sync::Mutex::new(()),
            wake: std::sync::Condvar::new(),
        });
        let ticking = state.clone();
        std::thread::Builder::new()
            .name("wasmkube-epoch".into())
            .spawn(move || {
                while !ticking.done.load(Ordering::Relaxed) {
                    {
                        let mut held = ticking.lock.lock().unwrap_or_else(|e| e.into_inner());
                        while idle() && !ticking.done.load(Ordering::Relaxed) {
                            held = ticking.wake.wait(held).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    std::thread::sleep(EPOCH_TICK);
                    tick();
                }
            })
            .map_err(ShimError::setup)?;
        Ok(EpochTicker(state))
    }

    /// Wakes the ticker: call after a request became in flight.
    fn busy(&self) {
        let _held = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.0.wake.notify_one();
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Relaxed);
        self.busy();
    }
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
    });

    let listener = crate::listen::bind(addr)
        .and_then(TcpListener::from_std)
        .map_err(|e| listen_err(e.to_string()))?;
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!("wasmkube: serving wasi:http on http://{bound}");
    tracing::info!("wasi:http limits: {limits:?}");

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
    Ok(0)
}

/// A response with a short plain-text body.
fn plain(status: StatusCode, text: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

impl Server {
    async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        if req.body().size_hint().lower() > self.limits.max_body {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            let mut resp = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight\n",
            );
            resp.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
            return resp;
        };
        self.ticker.busy();
        let method = req.method().clone();
        let uri = req.uri().clone();
        match self.call(req, permit).await {
            Ok(resp) => resp,
            Err(e) => {
                eprintln!("wasmkube: {method} {uri} failed: {e}");
                match e {
                    RequestError::Deadline(_) => {
                        plain(StatusCode::GATEWAY_TIMEOUT, "request deadline exceeded\n")
                    }
                    RequestError::BodyTooLarge(_) => {
                        plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
                    }
                    RequestError::Memory(r) if r.exceeds_the_whole_budget() => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "request needs more wasm memory than the container's memory limit allows\n",
                    ),
                    RequestError::Memory(_) => {
                        let mut resp = plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "container memory limit reached: memory in use by concurrent requests\n",
                        );
                        resp.headers_mut().insert(
                            hyper::header::RETRY_AFTER,
                            hyper::header::HeaderValue::from_static("1"),
                        );
                        resp
                    }
                    RequestError::Guest(_) => {
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
                    }
                }
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
        // The limiter lives in the store: dropping the store, however the request ends, gives
        // its memory back to the shared budget.
        let limiter = GuestLimiter::new(self.memory.clone());
        let mut store = Store::new(self.pre.engine(), P2State::new(&self.cfg, limiter));
        store.limiter(|s| &mut s.limiter);
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
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(RequestError::Guest)?;
        let pre = self.pre.clone();
        // The guest may keep streaming the body after sending headers: run it as its own task,
        // holding the request's slot until it ends (its deadline bounds it).
        let task = tokio::task::spawn(async move {
            let _permit = permit;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            // The epoch callback stops guests that compute; this stops guests blocked in a
            // host call (a sleep, a read) that never reach a tick.
            let result = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(r) => r,
                Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
            };
            match (result, store.data().limiter.refusal()) {
                (Err(e), _) if e.downcast_ref::<DeadlineExceeded>().is_some() => Err(e),
                (Err(_), Some(refusal)) => Err(wasmtime::Error::new(refusal)),
                (r, _) => r,
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

/// A request body that fails once more than `limit` bytes arrived (a chunked body has no
/// length to check up front) and records that it did.
struct LimitedBody {
    inner: Incoming,
    seen: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            self.seen = self.seen.saturating_add(data.len() as u64);
            if self.seen > self.limit {
                self.exceeded.store(true, Ordering::Relaxed);
                let limit = self.limit;
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                    Some(limit),
                ))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn the_epoch_ticks_only_while_requests_are_in_flight() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let idle = Arc::new(AtomicBool::new(true));
        let ticker = EpochTicker::start(
            {
                let ticks = ticks.clone();
                move || {
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            },
            {
                let idle = idle.clone();
                move || idle.load(Ordering::SeqCst)
            },
        )
        .expect("ticker");
        std::thread::sleep(EPOCH_TICK * 10);
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            0,
            "an idle server never ticks"
        );
        idle.store(false, Ordering::SeqCst);
        ticker.busy();
        std::thread::sleep(EPOCH_TICK * 10);
        let busy = ticks.load(Ordering::SeqCst);
        assert!(
            busy >= 3,
            "a busy server ticks every EPOCH_TICK: {busy} ticks"
        );
        idle.store(true, Ordering::SeqCst);
        std::thread::sleep(EPOCH_TICK * 3);
        let parked = ticks.load(Ordering::SeqCst);
        std::thread::sleep(EPOCH_TICK * 10);
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            parked,
            "idle again: no more ticks"
        );
        drop(ticker);
    }
}
