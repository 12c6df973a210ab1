//! The broker's wire format: one request and one response per connection, little-endian
//! length-prefixed fields, every length capped before anything is allocated.
use std::borrow::Cow;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::cache::ArtifactKind;
use crate::engine::{Allocation, Tier};

/// Largest module a container may send (wasmtime itself refuses far smaller code sections).
pub const MAX_WASM: u64 = 512 << 20;
/// Largest artefact the broker sends back.
pub const MAX_ARTEFACT: u64 = 2 << 30;
/// Largest string field (names, notes, error details).
pub const MAX_TEXT: u32 = 64 << 10;
/// Most notes in one response.
pub const MAX_NOTES: u32 = 16;

/// What a container asks (borrowed when sent, so the module is not copied).
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Compile (or fetch from the cache) `wasm`, named `what` in messages.
    Load {
        what: Cow<'a, str>,
        wasm: Cow<'a, [u8]>,
    },
    /// The asking process's memory limit and usage and CPU quota, read from the host's
    /// cgroupfs.
    Limits,
}

/// How a compiled artefact travels.
#[derive(Debug)]
pub enum Artefact {
    /// In the message.
    Bytes(Vec<u8>),
    /// As a read-only descriptor of an authenticated cache entry, passed beside the message
    /// (`SCM_RIGHTS`): the artefact is the file's first `len` bytes, mapped by the container
    /// so that the page cache holds one copy for every pod of the app (see [`crate::cache`],
    /// *Mapped entries*).
    File { file: OwnedFd, len: u64 },
}

impl PartialEq for Artefact {
    /// Files are equal when their lengths are: a descriptor has no content to compare.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Artefact::Bytes(a), Artefact::Bytes(b)) => a == b,
            (Artefact::File { len: a, .. }, Artefact::File { len: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Artefact {}

/// What the broker answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    Loaded {
        allocation: Allocation,
        tier: Tier,
        kind: ArtifactKind,
        artefact: Artefact,
        /// Things the container should print on its stderr (e.g. why the cache is off).
        notes: Vec<String>,
    },
    /// The module cannot be compiled; `detail` says why.
    Invalid { detail: String },
    /// The asking process's cgroup limits as the host sees them.
    Limits(HostLimits),
}

/// A container's cgroup limits as the host's cgroupfs shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostLimits {
    /// `(limit, usage)` in bytes, if a memory limit is set.
    pub memory: Option<(u64, u64)>,
    /// The CPU quota in CPUs, if one is set.
    pub cpus: Option<f64>,
}

impl Eq for HostLimits {}

/// A malformed or oversized message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("broker connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("broker message: {0}")]
    Malformed(String),
}

impl Request<'_> {
    /// Writes the request; the module goes straight from its buffer to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut head = Vec::new();
        match self {
            Request::Load { what, wasm } => {
                head.push(1);
                put_text(&mut head, what);
                head.extend_from_slice(&(wasm.len() as u64).to_le_bytes());
                w.write_all(&head)?;
                w.write_all(wasm)
            }
            Request::Limits => w.write_all(&[2]),
        }
    }

    pub fn decode(r: &mut impl Read) -> Result<Request<'static>, WireError> {
        match get_u8(r)? {
            1 => Ok(Request::Load {
                what: Cow::Owned(get_text(r)?),
                wasm: Cow::Owned(get_blob(r, MAX_WASM)?),
            }),
            2 => Ok(Request::Limits),
            t => Err(WireError::Malformed(format!("unknown request {t}"))),
        }
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Response::Loaded {
                allocation,
                tier,
                kind,
                artefact,
                notes,
            } => {
                out.push(1);
                out.push(match allocation {
                    Allocation::OnDemand => 0,
                    Allocation::Pooling => 1,
                });
                out.push(match tier {
                    Tier::Optimized => 0,
                    Tier::Baseline => 1,
                });
                out.push(match kind {
                    ArtifactKind::Module => 0,
                    ArtifactKind::Component => 1,
                });
                let notes = &notes[..notes.len().min(MAX_NOTES as usize)];
                out.extend_from_slice(&(notes.len() as u32).to_le_bytes());
                for n in notes {
                    put_text(&mut out, n);
                }
                match artefact {
                    Artefact::Bytes(bytes) => {
                        out.push(0);
                        put_blob(&mut out, bytes);
                    }
                    Artefact::File { len, .. } => {
                        out.push(1);
                        out.extend_from_slice(&len.to_le_bytes());
                    }
                }
            }
            Response::Invalid { detail } => {
                out.push(2);
                put_text(&mut out, detail);
            }
            Response::Limits(HostLimits { memory, cpus }) => {
                out.push(3);
                match memory {
                    None => out.push(0),
                    Some((limit, usage)) => {
                        out.push(1);
                        out.extend_from_slice(&limit.to_le_bytes());
                        out.extend_from_slice(&usage.to_le_bytes());
                    }
                }
                match cpus {
                    None => out.push(0),
                    Some(cpus) => {
                        out.push(1);
                        out.extend_from_slice(&cpus.to_bits().to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// The descriptor that travels beside the message, if any.
    pub fn descriptor(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Response::Loaded {
                artefact: Artefact::File { file, .. },
                ..
            } => Some(file.as_fd()),
            _ => None,
        }
    }

    /// Reads a response; `passed` is the descriptor that came with its first byte, if any.
    pub fn decode(r: &mut impl Read, passed: Option<OwnedFd>) -> Result<Self, WireError> {
        match get_u8(r)? {
            1 => {
                let allocation = match get_u8(r)? {
                    0 => Allocation::OnDemand,
                    1 => Allocation::Pooling,
                    a => return Err(WireError::Malformed(format!("unknown allocation {a}"))),
                };
                let tier = match get_u8(r)? {
                    0 => Tier::Optimized,
                    1 => Tier::Baseline,
                    t => return Err(WireError::Malformed(format!("unknown tier {t}"))),
                };
                let kind = match get_u8(r)? {
                    0 => ArtifactKind::Module,
                    1 => ArtifactKind::Component,
                    k => return Err(WireError::Malformed(format!("unknown kind {k}"))),
                };
                let count = get_u32(r)?;
                if count > MAX_NOTES {
                    return Err(WireError::Malformed(format!("{count} notes")));
                }
                let notes = (0..count).map(|_| get_text(r)).collect::<Result<_, _>>()?;
                let artefact = match get_u8(r)? {
                    0 => Artefact::Bytes(get_blob(r, MAX_ARTEFACT)?),
                    1 => Artefact::File {
                        len: get_u64(r)?,
                        file: passed.ok_or_else(|| {
                            WireError::Malformed("a file answer without its descriptor".into())
                        })?,
                    },
                    t => return Err(WireError::Malformed(format!("unknown artefact {t}"))),
                };
                Ok(Response::Loaded {
                    allocation,
                    tier,
                    kind,
                    notes,
                    artefact,
                })
            }
            2 => Ok(Response::Invalid {
                detail: get_text(r)?,
            }),
            3 => {
                let memory = match get_u8(r)? {
                    0 => None,
                    _ => Some((get_u64(r)?, get_u64(r)?)),
                };
                let cpus = match get_u8(r)? {
                    0 => None,
                    _ => Some(f64::from_bits(get_u64(r)?)).filter(|c| c.is_finite() && *c > 0.0),
                };
                Ok(Response::Limits(HostLimits { memory, cpus }))
            }
            t => Err(WireError::Malformed(format!("unknown response {t}"))),
        }
    }
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_TEXT as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u32).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn get_u8(r: &mut impl Read) -> Result<u8, WireError> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn get_u32(r: &mut impl Read) -> Result<u32, WireError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn get_u64(r: &mut impl Read) -> Result<u64, WireError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn get_text(r: &mut impl Read) -> Result<String, WireError> {
    let len = get_u32(r)?;
    if len > MAX_TEXT {
        return Err(WireError::Malformed(format!("text of {len} bytes")));
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|_| WireError::Malformed("text is not UTF-8".into()))
}

fn get_blob(r: &mut impl Read, max: u64) -> Result<Vec<u8>, WireError> {
    let len = get_u64(r)?;
    if len > max {
        return Err(WireError::Malformed(format!(
            "{len} bytes, more than the {max} allowed"
        )));
    }
    let mut b = Vec::new();
    r.take(len).read_to_end(&mut b)?;
    if b.len() as u64 != len {
        return Err(WireError::Malformed("truncated".into()));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for req in [
            Request::Load {
                what: "/app.wasm".into(),
                wasm: Cow::Borrowed(b"\0asm\x01\0\0\0"),
            },
            Request::Limits,
        ] {
            let mut bytes = Vec::new();
            req.write_to(&mut bytes).expect("write");
            assert_eq!(Request::decode(&mut &bytes[..]).expect("decode"), req);
        }
        for resp in [
            Response::Loaded {
                allocation: Allocation::Pooling,
                tier: Tier::Baseline,
                kind: ArtifactKind::Component,
                artefact: Artefact::Bytes(vec![1, 2, 3]),
                notes: vec!["cache off".into()],
            },
            Response::Invalid {
                detail: "bad".into(),
            },
            Response::Limits(HostLimits {
                memory: Some((64 << 20, 1 << 20)),
                cpus: Some(0.5),
            }),
            Response::Limits(HostLimits::default()),
        ] {
            let bytes = resp.encode();
            assert_eq!(
                Response::decode(&mut &bytes[..], None).expect("decode"),
                resp
            );
        }
    }

    #[test]
    fn a_file_answer_needs_its_descriptor() {
        let file = OwnedFd::from(std::fs::File::open("/dev/null").expect("open"));
        let resp = Response::Loaded {
            allocation: Allocation::OnDemand,
            tier: Tier::Optimized,
            kind: ArtifactKind::Module,
            artefact: Artefact::File { file, len: 42 },
            notes: vec![],
        };
        assert!(resp.descriptor().is_some());
        let bytes = resp.encode();
        assert!(matches!(
            Response::decode(&mut &bytes[..], None),
            Err(WireError::Malformed(m)) if m.contains("without its descriptor")
        ));
        let passed = OwnedFd::from(std::fs::File::open("/dev/null").expect("open"));
        assert_eq!(
            Response::decode(&mut &bytes[..], Some(passed)).expect("decode"),
            resp
        );
    }

    #[test]
    fn oversized_and_truncated_messages_are_refused_before_allocating() {
        let mut huge = vec![1u8];
        huge.extend_from_slice(&0u32.to_le_bytes());
        huge.extend_from_slice(&(MAX_WASM + 1).to_le_bytes());
        assert!(matches!(
            Request::decode(&mut &huge[..]),
            Err(WireError::Malformed(m)) if m.contains("more than")
        ));
        let mut full = Vec::new();
        Request::Load {
            what: "x".into(),
            wasm: Cow::Owned(vec![0; 100]),
        }
        .write_to(&mut full)
        .expect("write");
        assert!(Request::decode(&mut &full[..full.len() - 1]).is_err());
        assert!(Request::decode(&mut &[9u8][..]).is_err());
    }
}
