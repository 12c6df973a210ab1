//! `http-hello` guest (wasm32-wasip2 component, `wasi:http/proxy` world: exports
//! `wasi:http/incoming-handler`).
//!
//! Every request gets status 200, `content-type: text/plain` and the body
//! `hello from wasi:http, path=<path-with-query>\n`; for path `/env` the body is the value of the
//! `WK_GREETING` environment variable plus `\n` (or `unset\n`); for path `/instance` it is
//! `instance <id>: request <n> of this instance\n` (a random id drawn by the instance's first
//! request, and how many requests of any path it served; `n` stays 1 unless the WasmApp turns
//! on `spec.http.instanceReuse`). The shim tests
//! assert that the shim serves wasi:http components (like `wasmtime serve`): the request path
//! and query reach the guest, headers and body come back, and env from the OCI spec is visible
//! per request.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct HttpHello;

wasi::http::proxy::export!(HttpHello);

impl Guest for HttpHello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (id, n) = http_reply::count_request();
        let body_text = if path == "/instance" {
            format!("instance {id:016x}: request {n} of this instance\n")
        } else if path == "/env" {
            match std::env::var("WK_GREETING") {
                Ok(v) => format!("{v}\n"),
                Err(_) => "unset\n".to_string(),
            }
        } else {
            format!("hello from wasi:http, path={path}\n")
        };

        http_reply::text(response_out, &body_text);
    }
}
