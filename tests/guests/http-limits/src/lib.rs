//! `http-limits` guest (wasm32-wasip2 component, `wasi:http/proxy` world), used only by
//! `shim/tests/http_limits.rs` to drive the shim's wasi:http limits:
//!
//! - `/loop`: spins forever with no host calls and never responds (only the shim's epoch
//!   deadline, or a client that goes away, ends it);
//! - `/body`: reads the whole request body and answers `body <n> bytes\n` (a read error, such
//!   as the shim's body limit, traps as a panic does);
//! - anything else: 200 `ok <path-with-query>\n`.

use std::io::{Read as _, Write as _};

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HttpLimits;

wasi::http::proxy::export!(HttpLimits);

impl Guest for HttpLimits {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let text = match path.as_str() {
            "/loop" => spin(),
            "/body" => format!("body {} bytes\n", read_body(request)),
            _ => format!("ok {path}\n"),
        };
        let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
            .expect("valid header");
        let response = OutgoingResponse::new(headers);
        response.set_status_code(200).expect("valid status");
        let body = response.body().expect("response body");
        ResponseOutparam::set(response_out, Ok(response));
        let mut stream = body.write().expect("body stream");
        stream.write_all(text.as_bytes()).expect("write body");
        stream.flush().expect("flush body");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

/// Spins forever with no host calls.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Reads the request body to its end; returns its length.
fn read_body(request: IncomingRequest) -> usize {
    let body = request.consume().expect("request body");
    let mut stream = body.stream().expect("body stream");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).expect("read body");
    buf.len()
}
