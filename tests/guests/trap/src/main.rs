//! `trap` guest (wasm32-wasip1 core module).
//!
//! The shim tests assert that a real WebAssembly trap (an `unreachable` instruction, not a Rust
//! panic or a WASI exit) is reported as a failed task with a non-zero exit status, that output
//! written before the trap (`about to trap` on stdout) is not lost, and that the shim surfaces
//! the trap in its error/log output.

use std::io::Write;

fn main() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "about to trap");
    let _ = out.flush();
    // A genuine wasm trap: executes the `unreachable` instruction.
    core::arch::wasm32::unreachable()
}
