//! `cli-component` guest (wasm32-wasip2: rustc emits a `wasi:cli/run` component for `fn main`).
//!
//! Prints `hello from a component` and `arg[i]=<value>` per argument, then exits with the code
//! from `WK_EXIT` (0 when unset). The shim tests assert that components (not just core modules)
//! run under the shim with args, and that the exit status follows component semantics:
//! `wasi:cli/run` only carries ok/err, so any non-zero `WK_EXIT` is reported as 1.

use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "hello from a component");
    for (i, arg) in std::env::args().enumerate() {
        let _ = writeln!(out, "arg[{i}]={arg}");
    }
    let _ = out.flush();
    drop(out);
    let code = std::env::var("WK_EXIT")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(0);
    std::process::exit(code);
}
