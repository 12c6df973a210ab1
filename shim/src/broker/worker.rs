//! A worker process: answers one request on its standard input (a stream socket whose other
//! end a container process holds), then exits, returning the compiler's memory to the node.
//! It also exits as soon as the container hangs up (stopped, or gave up waiting).
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::cache::{ArtifactCache, ArtifactKind, CacheConfig, CacheKey};
use crate::engine::{self, Allocation};
use crate::error::ShimError;

use super::protocol::{HostLimits, Request, Response};

/// A worker never lives longer than this (a 20 MB module compiles in well under a minute).
const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// How long a container may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a container may take to read the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// Serves the request on stdin; returns the exit code.
pub fn run() -> i32 {
    // Before any thread exists, so that every thread (the compiler's too) inherits it.
    if let Err(e) = contain() {
        eprintln!("wasmkube compile worker: cannot drop privileges: {e}");
        return 1;
    }
    std::thread::spawn(|| {
        std::thread::sleep(MAX_LIFETIME);
        eprintln!("wasmkube compile worker: still running after {MAX_LIFETIME:?}, exiting");
        std::process::exit(1);
    });
    match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wasmkube compile worker: {e}");
            1
        }
    }
}

/// No capabilities (the cache directory is this user's own, so none is needed) and no way to
/// gain any.
fn contain() -> rustix::io::Result<()> {
    use rustix::thread::{set_capabilities, CapabilitySet, CapabilitySets};
    set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    rustix::thread::set_no_new_privs(true)
}

fn serve() -> Result<(), super::protocol::WireError> {
    let conn = UnixStream::from(super::stdin_fd()?);
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let request = Request::decode(&mut BufReader::new(&conn))?;
    end_on_hang_up(&conn)?;
    let response = match request {
        Request::Load { what, wasm } => load(&what, &wasm),
        Request::Limits => Response::Limits(peer_limits(&conn)),
    };
    (&conn).write_all(&response.encode())?;
    Ok(())
}

/// Ends this process when the container hangs up (it stopped, or gave up waiting): nobody
/// waits for the answer, and the compile's CPU and memory go back to the node at once.
fn end_on_hang_up(conn: &UnixStream) -> std::io::Result<()> {
    let watched = conn.try_clone()?;
    std::thread::spawn(move || {
        use rustix::event::{poll, PollFd, PollFlags};
        loop {
            let mut fds = [PollFd::new(&watched, PollFlags::RDHUP)];
            match poll(&mut fds, None) {
                Ok(_)
                    if fds[0]
                        .revents()
                        .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR) =>
                {
                    eprintln!("wasmkube compile worker: the container hung up, stopping");
                    std::process::exit(1);
                }
                Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
        }
    });
    Ok(())
}

/// Opens the cache (if configured and trustworthy) and answers a load request.
fn load(what: &str, wasm: &[u8]) -> Response {
    let mut notes = Vec::new();
    let cache = match CacheConfig::from_env() {
        Ok(Some(config)) => match ArtifactCache::open(&config) {
            Ok(cache) => Some(cache),
            Err(e) => {
                notes.push(format!("compiled-module cache off: {e}"));
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            notes.push(format!("compiled-module cache off: {e}"));
            None
        }
    };
    match artefact(what, wasm, cache.as_ref(), &mut notes) {
        Ok((allocation, kind, artefact)) => Response::Loaded {
            allocation,
            kind,
            artefact,
            notes,
        },
        Err(ShimError::Invalid { detail, .. }) => Response::Invalid { detail },
        Err(e) => Response::Invalid {
            detail: e.to_string(),
        },
    }
}

/// The compiled artefact for `wasm`: from the cache when an authenticated entry exists for any
/// allocation strategy the program may use (pooled first), else compiled — pooled first for
/// components, on demand when it does not fit the pool — and stored under its own strategy's
/// key, so a component too big for the pool compiles once, not on every start.
pub fn artefact(
    what: &str,
    wasm: &[u8],
    cache: Option<&ArtifactCache>,
    notes: &mut Vec<String>,
) -> Result<(Allocation, ArtifactKind, Vec<u8>), ShimError> {
    let kind = engine::kind_of(what, wasm)?;
    let mut candidates = Vec::new();
    for &allocation in engine::allocations_for(kind) {
        let engine = engine::new_engine(allocation)?;
        let key = CacheKey::new(
            kind,
            allocation.name(),
            wasm,
            engine.precompile_compatibility_hash(),
        );
        candidates.push((allocation, engine, key));
    }
    if let Some(cache) = cache {
        for (allocation, _, key) in &candidates {
            if let Some(artefact) = cache.load(key) {
                return Ok((*allocation, kind, artefact));
            }
        }
    }
    let mut last = None;
    for (allocation, engine, key) in &candidates {
        match engine::compile(engine, kind, what, wasm) {
            Ok(program) => {
                let artefact = program.serialize().map_err(ShimError::setup)?;
                if let Some(cache) = cache {
                    if let Err(e) = cache.store(key, &artefact) {
                        notes.push(e.to_string());
                    }
                }
                return Ok((*allocation, kind, artefact));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ShimError::setup("no allocation strategy")))
}

/// The cgroup limits of the process at the other end of `conn`, read from the host's cgroupfs
/// (a cgroup v1 container often cannot see its own).
fn peer_limits(conn: &UnixStream) -> HostLimits {
    let Some(paths) = rustix::net::sockopt::socket_peercred(conn)
        .ok()
        .and_then(|peer| {
            std::fs::read_to_string(format!("/proc/{}/cgroup", peer.pid.as_raw_nonzero())).ok()
        })
        .map(|text| crate::cgroup::parse_proc_cgroup(&text))
    else {
        return HostLimits::default();
    };
    let root = Path::new(crate::cgroup::CGROUP_ROOT);
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
    HostLimits {
        memory: crate::memory::limit_from(&crate::memory::candidate_files(&paths), read).found(),
        cpus: crate::cpu::quota_from(&crate::cpu::candidate_files(&paths), &read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOO_BIG_FOR_THE_POOL: &str =
        r#"(component (core module (table 300000 funcref)) (core instance (instantiate 0)))"#;

    fn cache(dir: &Path) -> ArtifactCache {
        ArtifactCache::open(&CacheConfig {
            dir: dir.to_path_buf(),
            max_bytes: crate::cache::DEFAULT_MAX_BYTES,
        })
        .expect("cache")
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .filter(|n| n.ends_with(".cwasm"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_miss_compiles_and_stores_and_a_hit_is_the_same_artefact() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = cache(&tmp.path().join("c"));
        let wat = br#"(module (func (export "_start")))"#;
        let mut notes = Vec::new();
        let (alloc, kind, first) = artefact("m", wat, Some(&cache), &mut notes).expect("compile");
        assert_eq!((alloc, kind), (Allocation::OnDemand, ArtifactKind::Module));
        assert_eq!(entries(cache.path()).len(), 1);
        let (_, _, second) = artefact("m", wat, Some(&cache), &mut notes).expect("hit");
        assert_eq!(first, second);
        assert!(notes.is_empty(), "{notes:?}");
        let engine = engine::new_engine(alloc).expect("engine");
        assert!(engine::deserialize(&engine, kind, &second).is_ok());
    }

    #[test]
    fn a_component_too_big_for_the_pool_is_cached_on_demand_and_not_recompiled() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = cache(&tmp.path().join("c"));
        let wasm = TOO_BIG_FOR_THE_POOL.as_bytes();
        let mut notes = Vec::new();
        let (alloc, kind, _) = artefact("c", wasm, Some(&cache), &mut notes).expect("compile");
        assert_eq!(
            (alloc, kind),
            (Allocation::OnDemand, ArtifactKind::Component)
        );
        let stored = entries(cache.path());
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert!(stored[0].starts_with("component-ondemand-"), "{stored:?}");
        let path = cache.path().join(&stored[0]);
        let ino =
            |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"));
        let before = ino(&path);
        let (alloc, _, _) = artefact("c", wasm, Some(&cache), &mut notes).expect("hit");
        assert_eq!(alloc, Allocation::OnDemand);
        assert_eq!(ino(&path), before, "served from the cache, not rewritten");
        assert_eq!(
            entries(cache.path()),
            stored,
            "the pooled attempt stored nothing"
        );
    }

    #[test]
    fn invalid_wasm_names_the_cause_and_stores_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = cache(&tmp.path().join("c"));
        let resp = {
            let mut notes = Vec::new();
            artefact("bad", b"\0asm\x01\0\0\0\x05", Some(&cache), &mut notes)
        };
        assert!(matches!(resp, Err(ShimError::Invalid { .. })), "{resp:?}");
        assert!(entries(cache.path()).is_empty());
    }
}
