//! What the wasi:http server answers when a request gets no response from its guest, and why.
use std::convert::Infallible;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::StatusCode;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::budget::MemoryRefusal;

/// Why a request got no response from the guest.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("request deadline of {0:?} exceeded")]
    Deadline(Duration),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error(transparent)]
    Memory(MemoryRefusal),
    #[error("{0:#}")]
    Guest(wasmtime::Error),
}

/// What the log says when an app's reused instance returned without answering.
pub(crate) const REUSE_REFUSED: &str =
    "wasmkube: instance reuse turned off: a reused instance returned \
     without answering its request (500), so this app cannot serve two requests on one instance \
     (e.g. a componentize-js app that uses addEventListener('fetch'): export incomingHandler \
     instead); every request now gets a fresh instance";

/// The trap raised in a guest that ran past its deadline (or was stopped after the drain).
#[derive(Debug, thiserror::Error)]
#[error("request deadline exceeded")]
pub(crate) struct DeadlineExceeded;

impl RequestError {
    /// The response a client gets for this failure.
    pub(crate) fn response(self) -> hyper::Response<HyperOutgoingBody> {
        match self {
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
            RequestError::Memory(_) => retry_later(
                "container memory limit reached: memory in use by concurrent requests\n",
            ),
            RequestError::Guest(_) => {
                plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
            }
        }
    }
}

/// 503 with `retry-after: 1`: the server is busy now, not broken.
pub(crate) fn retry_later(text: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, text);
    resp.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    resp
}

/// A response with a short plain-text body.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> hyper::Response<HyperOutgoingBody> {
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
