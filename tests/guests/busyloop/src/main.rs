//! `busyloop` guest (wasm32-wasip1 core module).
//!
//! Prints `spinning`, flushes, then spins forever on pure arithmetic with no host calls inside
//! the loop. The shim tests assert that such a guest can still be stopped — by `kill`/pod
//! deletion or a deadline — which only works through Wasmtime epoch interruption (or fuel),
//! since the guest never yields to the host.

use std::hint::black_box;
use std::io::Write;

fn main() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "spinning");
    let _ = out.flush();
    let mut x: u64 = black_box(1);
    loop {
        // black_box keeps the optimiser from proving the loop has no effect.
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
}
