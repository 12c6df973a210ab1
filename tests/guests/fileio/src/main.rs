//! `fileio` guest (wasm32-wasip1 core module).
//!
//! Usage: `fileio <dir>`. Reads `<dir>/input.txt`, prints `read: <content trimmed>`, writes
//! `<dir>/output.txt` containing `written by wasm: <content trimmed>` and prints
//! `wrote <path>`. The shim tests assert that OCI mounts / the rootfs are preopened for the
//! guest (reads see host content, writes land on the host); on any error the guest prints it
//! on stderr and exits 2, so a missing preopen shows up as exit status 2.

use std::io::Write;
use std::path::Path;

fn run() -> Result<(), String> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| "usage: fileio <dir>".to_string())?;
    let dir = Path::new(&dir);
    let input = dir.join("input.txt");
    let content =
        std::fs::read_to_string(&input).map_err(|e| format!("reading {}: {e}", input.display()))?;
    let content = content.trim();
    println!("read: {content}");
    let output = dir.join("output.txt");
    std::fs::write(&output, format!("written by wasm: {content}"))
        .map_err(|e| format!("writing {}: {e}", output.display()))?;
    println!("wrote {}", output.display());
    Ok(())
}

fn main() {
    let result = run();
    let _ = std::io::stdout().flush();
    if let Err(e) = result {
        eprintln!("fileio: {e}");
        std::process::exit(2);
    }
}
