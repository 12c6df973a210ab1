//! `http-outbound` guest (wasm32-wasip2 component, `wasi:http/proxy` world plus wasi:sockets
//! through std): reaches out on request, so the shim's tests can see what its grants allow.
//!
//! - `/fetch?<url>`: an outgoing wasi:http GET of `<url>`; the body is `status=<code>
//!   body=<first line>` or `error=<wasi:http error-code>` (e.g. `error=HttpRequestDenied`).
//! - `/tcp?<ip:port>`: a wasi:sockets TCP connect; `connected` or `error=<io error>`.
//! - `/lookup?<host>`: a name lookup (wasi:sockets ip-name-lookup); `addrs=<a,b>` or
//!   `error=<io error>`.
//!
//! - `/env`: the names of the guest's environment variables, comma-separated.
//! - `/instance`: `instance <id>: request <n> of this instance`, as the example app answers.
//! - `/silent`: returns without answering, keeping the response-outparam (what a componentize-js
//!   FetchEvent app does on a reused instance): the e2e case of an app that cannot be reused.
//!
//! Any other path: `outbound guest` (a readiness target).

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, IncomingRequest, OutgoingRequest, ResponseOutparam, Scheme};

struct HttpOutbound;

wasi::http::proxy::export!(HttpOutbound);

impl Guest for HttpOutbound {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (route, arg) = path.split_once('?').unwrap_or((path.as_str(), ""));
        if route == "/silent" {
            std::mem::forget(response_out);
            return;
        }
        let text = match route {
            "/instance" => {
                let (id, n) = http_reply::count_request();
                format!("instance {id:016x}: request {n} of this instance")
            }
            "/fetch" => fetch(arg).unwrap_or_else(|e| format!("error={e}")),
            "/tcp" => tcp(arg),
            "/lookup" => lookup(arg),
            "/env" => std::env::vars()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
                .join(","),
            _ => "outbound guest".to_string(),
        };
        http_reply::text(response_out, &format!("{text}\n"));
    }
}

fn fetch(url: &str) -> Result<String, String> {
    let (scheme, rest) = url.split_once("://").ok_or("no scheme in the url")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    req.set_scheme(Some(&scheme)).map_err(|()| "bad scheme")?;
    req.set_authority(Some(authority))
        .map_err(|()| "bad authority")?;
    req.set_path_with_query(Some(path))
        .map_err(|()| "bad path")?;
    let pending = outgoing_handler::handle(req, None).map_err(code)?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(code)?;
    let status = response.status();
    let body = response.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no body stream")?;
    let mut bytes = Vec::new();
    while bytes.len() < 4096 {
        match stream.blocking_read(4096) {
            Ok(chunk) if chunk.is_empty() => continue,
            Ok(chunk) => bytes.extend(chunk),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(format!(
        "status={status} body={}",
        text.lines().next().unwrap_or("")
    ))
}

/// A wasi:http error code as its variant's name (`HttpRequestDenied`).
fn code(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
        .trim_start_matches("ErrorCode::")
        .to_string()
}

fn tcp(addr: &str) -> String {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return format!("error=not an address: {addr}");
    };
    // A blocking connect: wasi-libc's non-blocking path reports a refused check as connected.
    match TcpStream::connect(addr) {
        Ok(_) => "connected".to_string(),
        Err(e) => format!("error={e}"),
    }
}

fn lookup(host: &str) -> String {
    match (host, 80).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            format!("addrs={}", addrs.join(","))
        }
        Err(e) => format!("error={e}"),
    }
}
