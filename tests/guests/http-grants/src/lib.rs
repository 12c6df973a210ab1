//! `http-grants` guest (wasm32-wasip2 component, `wasi:http/proxy` plus `wasi:config/store` and
//! `wasi:keyvalue`): shows what the shim lets it read and keep, so tests can see what a
//! WasmApp's grants give it.
//!
//! - `/config/<key>`: the value of `<key>` from wasi:config, `missing` when there is none.
//! - `/config`: every key wasi:config has, `key=value` lines, sorted.
//! - `/env`: the guest's environment, `NAME=value` lines.
//! - `/file?<path>`: the file's contents, or `error=<io error>`.
//! - `/ls?<path>`: the directory's entry names, comma-separated, or `error=<io error>`.
//! - `/kv/<store>/get/<key>`, `/kv/<store>/set/<key>?<value>`, `/kv/<store>/delete/<key>`,
//!   `/kv/<store>/incr/<key>?<delta>`, `/kv/<store>/keys`, `/kv/<store>/many?<k1,k2,..>`:
//!   wasi:keyvalue calls on store `<store>`; `missing` for no value, `error=<wasi:keyvalue
//!   error>` when a call fails.
//! - `/count`: adds one to `visits` in store `default` and answers `visits=<n>` (the kv-counter
//!   example).
//! - `/instance`: `instance <id>: request <n> of this instance`, as the example app answers.
//!
//! Any other path: `config guest` (a readiness target).

use ::wasi::exports::http::incoming_handler::Guest;
use ::wasi::http::types::{IncomingRequest, ResponseOutparam};

wit_bindgen::generate!({
    path: "wit",
    world: "http-grants",
    generate_all,
});

use crate::wasi::config::store;
use crate::wasi::keyvalue::{atomics, batch, store as kv};

struct HttpConfig;

::wasi::http::proxy::export!(HttpConfig);

impl Guest for HttpConfig {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (route, arg) = path.split_once('?').unwrap_or((path.as_str(), ""));
        let text = if let Some(rest) = route.strip_prefix("/kv/") {
            key_value(rest, arg).unwrap_or_else(|e| format!("error={}", kv_error(e)))
        } else if route == "/count" {
            kv::open("default")
                .and_then(|b| atomics::increment(&b, "visits", 1))
                .map(|n| format!("visits={n}"))
                .unwrap_or_else(|e| format!("error={}", kv_error(e)))
        } else if let Some(key) = route.strip_prefix("/config/") {
            match store::get(key) {
                Ok(Some(v)) => v,
                Ok(None) => "missing".to_string(),
                Err(e) => format!("error={e:?}"),
            }
        } else {
            match route {
                "/config" => match store::get_all() {
                    Ok(mut all) => {
                        all.sort();
                        all.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                    Err(e) => format!("error={e:?}"),
                },
                "/instance" => {
                    let (id, n) = http_reply::count_request();
                    format!("instance {id:016x}: request {n} of this instance")
                }
                "/env" => std::env::vars()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                "/file" => std::fs::read_to_string(arg).unwrap_or_else(|e| format!("error={e}")),
                "/ls" => match std::fs::read_dir(arg) {
                    Ok(entries) => {
                        let mut names: Vec<String> = entries
                            .flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect();
                        names.sort();
                        names.join(",")
                    }
                    Err(e) => format!("error={e}"),
                },
                _ => "config guest".to_string(),
            }
        };
        http_reply::text(response_out, &format!("{text}\n"));
    }
}

/// One wasi:keyvalue call: `<store>/<op>[/<key>]`, `arg` the value, delta or key list.
fn key_value(rest: &str, arg: &str) -> Result<String, kv::Error> {
    let mut parts = rest.splitn(3, '/');
    let store = parts.next().unwrap_or_default();
    let op = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default();
    let bucket = kv::open(store)?;
    Ok(match op {
        "get" => match bucket.get(key)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => "missing".to_string(),
        },
        "set" => {
            bucket.set(key, arg.as_bytes())?;
            "ok".to_string()
        }
        "delete" => {
            bucket.delete(key)?;
            "ok".to_string()
        }
        "exists" => bucket.exists(key)?.to_string(),
        "incr" => atomics::increment(&bucket, key, arg.parse().unwrap_or(1))?.to_string(),
        "keys" => {
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = bucket.list_keys(cursor)?;
                keys.extend(page.keys);
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            keys.sort();
            keys.join(",")
        }
        "many" => {
            let keys: Vec<String> = arg.split(',').map(str::to_string).collect();
            batch::get_many(&bucket, &keys)?
                .into_iter()
                .zip(&keys)
                .map(|(v, k)| match v {
                    Some((_, v)) => format!("{k}={}", String::from_utf8_lossy(&v)),
                    None => format!("{k}=missing"),
                })
                .collect::<Vec<_>>()
                .join(",")
        }
        other => format!("unknown operation {other:?}"),
    })
}

/// A wasi:keyvalue error as the tests read it: `no-such-store`, `access-denied`, `other: <why>`.
fn kv_error(e: kv::Error) -> String {
    match e {
        kv::Error::NoSuchStore => "no-such-store".to_string(),
        kv::Error::AccessDenied => "access-denied".to_string(),
        kv::Error::Other(why) => format!("other: {why}"),
    }
}
