//! `http-hello` guest (wasm32-wasip2 component, `wasi:http/proxy` world: exports
//! `wasi:http/incoming-handler`).
//!
//! Every request gets status 200, `content-type: text/plain` and the body
//! `hello from wasi:http, path=<path-with-query>\n`; for path `/env` the body is the value of the
//! `WK_GREETING` environment variable plus `\n` (or `unset\n`). The shim tests assert that the
//! shim serves wasi:http components (like `wasmtime serve`): the request path and query reach
//! the guest, headers and body come back, and env from the OCI spec is visible per request.

use std::io::Write as _;

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HttpHello;

wasi::http::proxy::export!(HttpHello);

impl Guest for HttpHello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let body_text = if path == "/env" {
            match std::env::var("WK_GREETING") {
                Ok(v) => format!("{v}\n"),
                Err(_) => "unset\n".to_string(),
            }
        } else {
            format!("hello from wasi:http, path={path}\n")
        };

        let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
            .expect("valid header");
        let response = OutgoingResponse::new(headers);
        response.set_status_code(200).expect("valid status");
        let body = response.body().expect("response body");
        ResponseOutparam::set(response_out, Ok(response));

        let mut stream = body.write().expect("body stream");
        stream.write_all(body_text.as_bytes()).expect("write body");
        stream.flush().expect("flush body");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}
