//! Serves a `wasi:http/proxy` component over HTTP/1.1 on the pod's port: one pre-instantiated
//! component, a fresh instance (pooling allocator) per request, graceful stop on SIGTERM.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use wasmtime::component::Component;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::error::ShimError;
use crate::state::{GuestConfig, P2State, DEFAULT_HTTP_ADDR, HTTP_ADDR_ENV};
use crate::stop::StopSignal;

/// How long in-flight requests may take to finish after a stop request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Names of the component's exports.
pub fn exports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
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

    let mut linker = wasmtime::component::Linker::<P2State>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(ShimError::setup)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(ShimError::setup)?;
    let link = |e: wasmtime::Error| ShimError::Link {
        what: cfg.what.clone(),
        detail: format!("{e:#}"),
    };
    let pre = ProxyPre::new(linker.instantiate_pre(component).map_err(link)?).map_err(link)?;
    let server = Arc::new(Server {
        pre,
        cfg: cfg.clone(),
    });

    let listener = crate::listen::bind(addr)
        .and_then(TcpListener::from_std)
        .map_err(|e| listen_err(e.to_string()))?;
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!("wasmkube: serving wasi:http on http://{bound}");

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
                let conn = http1::Builder::new().keep_alive(true).serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    }),
                );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection error: {e}");
                    }
                });
            }
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "wasmkube: in-flight requests still running after {DRAIN_TIMEOUT:?}; stopping them"
        );
        engine.increment_epoch();
    }
    Ok(0)
}

impl Server {
    async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        match self.call(req).await {
            Ok(resp) => resp,
            Err(e) => {
                eprintln!("wasmkube: {method} {uri} failed: {e:#}");
                let body = Full::new(Bytes::from_static(b"internal server error\n"))
                    .map_err(|never: Infallible| match never {})
                    .boxed_unsync();
                let mut resp = hyper::Response::new(body);
                *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                resp
            }
        }
    }

    async fn call(
        &self,
        req: hyper::Request<Incoming>,
    ) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
        let mut store = Store::new(self.pre.engine(), P2State::new(&self.cfg));
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.pre.clone();
        // The guest may keep streaming the body after sending headers: run it as its own task.
        let task = tokio::task::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            let result = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await;
            match (result, store.data().limiter.refused()) {
                (Err(_), Some(limit)) => Err(wasmtime::Error::msg(limit.to_string())),
                (r, _) => r,
            }
        });
        match receiver.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(wasmtime::Error::msg(format!(
                "guest returned error code {code:?}"
            ))),
            Err(_) => match task.await {
                Ok(Ok(())) => Err(wasmtime::Error::msg(
                    "guest never called response-outparam::set",
                )),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(wasmtime::Error::msg(format!("request task failed: {e}"))),
            },
        }
    }
}
