//! `hello` guest (wasm32-wasip1 core module).
//!
//! The shim tests assert, from the captured stdio and exit status:
//! - stdout starts with `hello from wasm` (the module ran at all);
//! - `arg[i]=<value>` lines: argv from the OCI process spec reaches the guest, argv[0] included;
//! - `env <NAME>=<value>` lines for every `WK_*` variable, sorted by name: env from the spec;
//! - `cwd=<dir>`: the working directory from the spec (`cwd=?` if the guest cannot resolve it);
//! - `to stderr` on stderr: stdout and stderr are wired separately;
//! - exit status = `WK_EXIT` (a p1 module keeps the full exit code), 0 when unset.

use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "hello from wasm");
    for (i, arg) in std::env::args().enumerate() {
        let _ = writeln!(out, "arg[{i}]={arg}");
    }
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("WK_"))
        .collect();
    vars.sort();
    for (k, v) in &vars {
        let _ = writeln!(out, "env {k}={v}");
    }
    match std::env::current_dir() {
        Ok(dir) => {
            let _ = writeln!(out, "cwd={}", dir.display());
        }
        Err(_) => {
            let _ = writeln!(out, "cwd=?");
        }
    }
    let _ = out.flush();
    drop(out);
    eprintln!("to stderr");

    let code = std::env::var("WK_EXIT")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(0);
    std::process::exit(code);
}
