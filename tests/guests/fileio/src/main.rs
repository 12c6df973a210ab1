//! `fileio` guest (wasm32-wasip1 core module).
//!
//! Usage:
//! - `fileio <dir>`: reads `<dir>/input.txt`, prints `read: <content trimmed>`, writes
//!   `<dir>/output.txt` containing `written by wasm: <content trimmed>` and prints
//!   `wrote <path>`.
//! - `fileio cat <path>...`: prints `<path>: <content trimmed>` for each file, in order.
//!   Relative paths resolve against the working directory (the shim's `.` preopen).
//! - `fileio write <path> <text>`: writes `<text>` to `<path>` (created or truncated) and
//!   prints `wrote <path>`.
//! - `fileio preopens`: prints `preopen <fd> <name>` for each WASI preopen, in fd order.
//! - `fileio catat <name> <relpath>`: opens `<relpath>` relative to the preopen called `<name>`
//!   with raw WASI calls (no libc path resolution) and prints `<name> <relpath>: <content
//!   trimmed>`: what a preopen really is, whatever wasi-libc would pick for a path.
//!
//! The shim tests assert that OCI mounts, the rootfs and the working directory are preopened
//! for the guest (reads see host content, writes land on the host, read-only mounts refuse
//! writes). On any error the guest prints `fileio: <what>: <error>` on stdout and stderr,
//! where `<error>` is the error WASI returned (e.g. `Operation not permitted (os error 63)`,
//! `Read-only file system (os error 69)`), and exits 2; so a missing preopen or a refused
//! write shows up as exit status 2 together with the reason.

use std::io::{Read, Write};
use std::path::Path;

/// The few raw WASI preview1 calls wasi-libc does not expose as they are.
mod raw {
    #[repr(C)]
    struct Prestat {
        tag: u8,
        name_len: u32,
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn fd_prestat_get(fd: u32, buf: *mut Prestat) -> u16;
        fn fd_prestat_dir_name(fd: u32, path: *mut u8, len: usize) -> u16;
        #[allow(clippy::too_many_arguments)]
        fn path_open(
            fd: u32,
            dirflags: u32,
            path: *const u8,
            path_len: usize,
            oflags: u16,
            rights_base: u64,
            rights_inheriting: u64,
            fdflags: u16,
            opened: *mut u32,
        ) -> u16;
    }

    /// `(fd, name)` of every preopen: fds from 3 up while `fd_prestat_get` succeeds.
    pub fn preopens() -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for fd in 3.. {
            let mut pre = Prestat {
                tag: 0,
                name_len: 0,
            };
            // SAFETY: `pre` is a valid, writable prestat.
            if unsafe { fd_prestat_get(fd, &mut pre) } != 0 || pre.tag != 0 {
                break;
            }
            let mut name = vec![0u8; pre.name_len as usize];
            // SAFETY: `name` holds exactly `name_len` writable bytes.
            if unsafe { fd_prestat_dir_name(fd, name.as_mut_ptr(), name.len()) } != 0 {
                break;
            }
            out.push((fd, String::from_utf8_lossy(&name).into_owned()));
        }
        out
    }

    /// Opens `path` for reading relative to the directory `dir`; the new fd or the WASI errno.
    pub fn open_at(dir: u32, path: &str) -> Result<u32, u16> {
        const FD_READ: u64 = 1 << 1;
        let mut fd = 0u32;
        // SAFETY: `path` is valid for `path.len()` bytes and `fd` is writable.
        let errno =
            unsafe { path_open(dir, 0, path.as_ptr(), path.len(), 0, FD_READ, 0, 0, &mut fd) };
        if errno == 0 {
            Ok(fd)
        } else {
            Err(errno)
        }
    }
}

/// `<relpath>` under the preopen named `name`, read without wasi-libc's path resolution.
fn cat_at(name: &str, relpath: &str) -> Result<String, String> {
    use std::os::fd::FromRawFd;
    let preopens = raw::preopens();
    let (dir, _) = preopens
        .iter()
        .find(|(_, n)| n == name)
        .ok_or_else(|| format!("no preopen named {name:?} (preopens: {preopens:?})"))?;
    let fd = raw::open_at(*dir, relpath)
        .map_err(|errno| format!("opening {relpath} in preopen {name}: WASI errno {errno}"))?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd as i32) };
    let mut content = String::new();
    file.read_to_string(&mut content)
        .map_err(|e| format!("reading {relpath} in preopen {name}: {e}"))?;
    Ok(content.trim().to_string())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("reading {}: {e}", path.display()))
}

fn write(path: &Path, content: &str) -> Result<(), String> {
    std::fs::write(path, content).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd, paths @ ..] if cmd == "cat" && !paths.is_empty() => {
            for p in paths {
                println!("{p}: {}", read(Path::new(p))?);
            }
            Ok(())
        }
        [cmd, path, text] if cmd == "write" => write(Path::new(path), text),
        [cmd] if cmd == "preopens" => {
            for (fd, name) in raw::preopens() {
                println!("preopen {fd} {name}");
            }
            Ok(())
        }
        [cmd, name, relpath] if cmd == "catat" => {
            println!("{name} {relpath}: {}", cat_at(name, relpath)?);
            Ok(())
        }
        [dir] => {
            let dir = Path::new(dir);
            let content = read(&dir.join("input.txt"))?;
            println!("read: {content}");
            write(
                &dir.join("output.txt"),
                &format!("written by wasm: {content}"),
            )
        }
        _ => Err(
            "usage: fileio <dir> | cat <path>... | write <path> <text> | preopens \
             | catat <preopen> <relpath>"
                .to_string(),
        ),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = run(&args);
    if let Err(e) = result {
        println!("fileio: {e}");
        let _ = std::io::stdout().flush();
        eprintln!("fileio: {e}");
        std::process::exit(2);
    }
    let _ = std::io::stdout().flush();
}
