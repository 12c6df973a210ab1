//! `http-limits` guest (wasm32-wasip2 component, `wasi:http/proxy` world), used only by
//! `shim/tests/http_limits.rs` to drive the shim's wasi:http limits:
//!
//! - `/loop`: spins forever with no host calls and never responds (only the shim's epoch
//!   deadline, or a client that goes away, ends it);
//! - `/body`: reads the whole request body and answers `body <n> bytes\n` (a read error, such
//!   as the shim's body limit, traps as a panic does);
//! - `/alloc?mb=<n>&ms=<t>`: allocates `n` MiB of linear memory, writes every page of it (so it
//!   is resident, not just reserved), holds it for `t` ms and answers `held <n> MiB for <t> ms\n`
//!   (a refused growth traps);
//! - `/sleep?ms=<t>`: waits `t` ms on a `wasi:clocks` timer (blocked in the host, no busy loop)
//!   and answers `slept <t> ms\n`;
//! - `/count?ms=<t>`: waits `t` ms, then answers `instance <id> request <n>\n`: a random id
//!   drawn by this instance's first request and how many requests this instance has served
//!   (1 for a fresh instance; more only when the shim reuses instances);
//! - `/panic`: counts the request, then panics (a trap);
//! - `/silent`: counts the request, then returns without answering, keeping the
//!   response-outparam (as StarlingMonkey's FetchEvent does on a reused instance);
//! - anything else: 200 `ok <path-with-query>\n`.

use std::io::Read as _;

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct HttpLimits;

wasi::http::proxy::export!(HttpLimits);

impl Guest for HttpLimits {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (route, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
        if route == "/silent" {
            http_reply::count_request();
            std::mem::forget(response_out);
            return;
        }
        let text = match route {
            "/loop" => spin(),
            "/body" => format!("body {} bytes\n", read_body(request)),
            "/alloc" => {
                let (mb, ms) = (param(query, "mb"), param(query, "ms"));
                let held = std::hint::black_box(allocate(mb));
                sleep_ms(ms);
                let text = format!("held {} MiB for {ms} ms\n", held.len() >> 20);
                drop(held);
                text
            }
            "/count" => {
                sleep_ms(param(query, "ms"));
                let (id, n) = http_reply::count_request();
                format!("instance {id:016x} request {n}\n")
            }
            "/panic" => {
                http_reply::count_request();
                panic!("/panic requested");
            }
            "/sleep" => {
                let ms = param(query, "ms");
                sleep_ms(ms);
                format!("slept {ms} ms\n")
            }
            _ => format!("ok {path}\n"),
        };
        http_reply::text(response_out, &text);
    }
}

/// Spins forever with no host calls.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// A numeric query parameter (0 when missing or malformed).
fn param(query: &str, name: &str) -> u64 {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// `mb` MiB, every 4 KiB page written.
fn allocate(mb: u64) -> Vec<u8> {
    let len = usize::try_from(mb)
        .unwrap_or(usize::MAX)
        .saturating_mul(1 << 20);
    let mut block = Vec::with_capacity(len);
    block.resize(len, 0u8);
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    block
}

/// Blocks on a monotonic-clock pollable for `ms` milliseconds.
fn sleep_ms(ms: u64) {
    wasi::clocks::monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
}

/// Reads the request body to its end; returns its length.
fn read_body(request: IncomingRequest) -> usize {
    let body = request.consume().expect("request body");
    let mut stream = body.stream().expect("body stream");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).expect("read body");
    buf.len()
}
