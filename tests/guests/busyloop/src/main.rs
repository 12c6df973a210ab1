//! `busyloop` guest (wasm32-wasip1 core module).
//!
//! Prints `spinning`, flushes, then spins forever on pure arithmetic with no host calls inside
//! the loop. The shim tests assert that such a guest can still be stopped — by `kill`/pod
//! deletion or a deadline — which only works through Wasmtime epoch interruption (or fuel),
//! since the guest never yields to the host.
//!
//! `busyloop <rounds>` instead does a fixed, compute-bound job and exits: each round fills a
//! 1 MiB buffer from a generator, sorts it and hashes it; it prints
//! `work <rounds>: <hash> in <ms> ms`, timed inside the guest (the benchmark of Winch against
//! Cranelift code, without compile or start time).

use std::hint::black_box;
use std::io::Write;

fn main() {
    if let Some(rounds) = std::env::args().nth(1).and_then(|a| a.parse::<u32>().ok()) {
        let start = std::time::Instant::now();
        let hash = work(rounds);
        println!(
            "work {rounds}: {hash:016x} in {} ms",
            start.elapsed().as_millis()
        );
        return;
    }
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

/// `rounds` times: 128 Ki generated `u64`s, sorted, folded into an FNV-1a hash.
fn work(rounds: u32) -> u64 {
    let mut x: u64 = black_box(1);
    let mut hash: u64 = 0xcbf29ce484222325;
    let mut buf = vec![0u64; 128 << 10];
    for _ in 0..rounds {
        for v in buf.iter_mut() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v = x >> 11;
        }
        buf.sort_unstable();
        for v in &buf {
            hash = (hash ^ v).wrapping_mul(0x100000001b3);
        }
    }
    black_box(hash)
}
