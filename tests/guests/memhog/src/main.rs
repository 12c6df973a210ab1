//! `memhog` guest (wasm32-wasip1 core module).
//!
//! Allocates `WK_HOG_MIB` MiB (default 256) in 1 MiB chunks, touching every 4 KiB page and
//! keeping every chunk alive, printing `allocated <n> MiB` every 16 MiB and `done <n> MiB` at the
//! end (exit 0). The shim tests assert memory limits: with a limit below the request the guest
//! must fail (linear memory growth refused → allocation failure → trap, or the cgroup OOM) and the
//! last progress line shows how far it got; with enough memory it prints `done` and exits 0.

use std::io::Write;

const MIB: usize = 1024 * 1024;

fn main() {
    let target: usize = std::env::var("WK_HOG_MIB")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(256);
    let mut out = std::io::stdout();
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for n in 1..=target {
        let mut chunk = vec![0u8; MIB];
        for i in (0..MIB).step_by(4096) {
            chunk[i] = (n as u8) | 1;
        }
        chunks.push(std::hint::black_box(chunk));
        if n % 16 == 0 {
            let _ = writeln!(out, "allocated {n} MiB");
            let _ = out.flush();
        }
    }
    let _ = writeln!(out, "done {} MiB", chunks.len());
    let _ = out.flush();
    std::process::exit(0);
}
