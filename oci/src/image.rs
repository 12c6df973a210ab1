//! `wasmkube image build`: a native image from a Dockerfile in [`crate::dockerfile`]'s subset
//! and a build context of prebuilt files, without Docker, through the same OCI writer as
//! `wasmkube pack`.
//!
//! `COPY` follows Docker's rules so that `docker build` of the same Dockerfile and context gives
//! the same files: a file source lands at DEST, or inside DEST when DEST ends in `/`, is a
//! directory already, or there are several sources; a directory source copies its *contents*
//! into DEST, keeping symlinks as symlinks; a symlink given as a source is followed (within the
//! context); missing parents are created with mode 0755; modes come from the context file or
//! `--chmod`; owners are 0:0. Like Docker on a scratch base the config starts with
//! `PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` and working dir `/`, and
//! `WORKDIR` creates its directory.
//!
//! Unlike Docker the result is one layer and byte-for-byte reproducible: mtimes are 0, entries
//! are sorted, and gzip is fixed (see [`crate::archive`]).

use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use crate::{
    archive::{LayerEntry, LayerTree, DIR_MODE},
    dockerfile::{self, Copy, Dockerfile, DockerfileError, Instruction},
    layout::{self, ImagePlatform, OciError, RunConfig},
    reference::ImageRef,
};

/// `PATH` of a scratch image's config, as Docker (BuildKit) sets it on Linux.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything that can go wrong while building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read {}", path.display())]
    ReadDockerfile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("in {}", path.display())]
    Dockerfile {
        path: PathBuf,
        #[source]
        source: DockerfileError,
    },
    #[error("build context {} is not a directory", path.display())]
    Context {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("line {line}: COPY source {src:?} is not in the build context ({})", path.display())]
    SourceMissing {
        line: usize,
        src: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("line {line}: COPY source {src:?} is outside the build context")]
    SourceOutside { line: usize, src: String },
    #[error("cannot read {}", path.display())]
    ReadSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    UnsupportedFile { path: PathBuf, reason: &'static str },
    #[error("line {line}: cannot put /{path} in the image: {reason}")]
    Conflict {
        line: usize,
        path: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Oci(#[from] OciError),
}

/// A built image, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub reference: ImageRef,
    pub platform: ImagePlatform,
    /// The image-layout tar archive.
    pub archive: Vec<u8>,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config blob.
    pub config_digest: String,
    /// Bytes of the uncompressed layer tar.
    pub content_size: u64,
    /// Number of files, directories and symlinks in the layer.
    pub entries: usize,
}

/// Reads and parses `dockerfile`, lays out its files from `context`, and assembles the image.
pub fn build_image(
    dockerfile: &Path,
    context: &Path,
    reference: &ImageRef,
    platform: &ImagePlatform,
) -> Result<BuiltImage, BuildError> {
    let text = fs::read_to_string(dockerfile).map_err(|source| BuildError::ReadDockerfile {
        path: dockerfile.to_owned(),
        source,
    })?;
    let parsed = dockerfile::parse(&text).map_err(|source| BuildError::Dockerfile {
        path: dockerfile.to_owned(),
        source,
    })?;
    let (tree, run) = layout(&parsed, context)?;
    let parts = layout::tar_image(&tree, platform, &run)?;
    let image = layout::assemble(parts, reference)?;
    Ok(BuiltImage {
        reference: reference.clone(),
        platform: platform.clone(),
        archive: image.archive,
        manifest_digest: image.manifest_digest,
        config_digest: image.config_digest,
        content_size: image.content_size,
        entries: tree.len(),
    })
}

/// The layer's files and the run config that `dockerfile` describes over `context`.
pub fn layout(
    dockerfile: &Dockerfile,
    context: &Path,
) -> Result<(LayerTree, RunConfig), BuildError> {
    let context = fs::canonicalize(context)
        .and_then(|c| {
            if c.is_dir() {
                Ok(c)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "not a directory",
                ))
            }
        })
        .map_err(|source| BuildError::Context {
            path: context.to_owned(),
            source,
        })?;
    let mut state = State {
        context,
        tree: LayerTree::new(),
        run: RunConfig {
            env: vec![format!("PATH={DEFAULT_PATH}")],
            working_dir: Some("/".to_owned()),
            ..RunConfig::default()
        },
        workdir: String::new(),
    };
    for (line, instruction) in &dockerfile.instructions {
        state.apply(*line, instruction)?;
    }
    Ok((state.tree, state.run))
}

struct State {
    /// Canonical.
    context: PathBuf,
    tree: LayerTree,
    run: RunConfig,
    /// Relative to `/`, no trailing slash (`""` is the root).
    workdir: String,
}

impl State {
    fn apply(&mut self, line: usize, instruction: &Instruction) -> Result<(), BuildError> {
        match instruction {
            Instruction::Copy(copy) => self.copy(line, copy)?,
            Instruction::Entrypoint(argv) => self.run.entrypoint = Some(argv.clone()),
            Instruction::Cmd(argv) => self.run.cmd = Some(argv.clone()),
            Instruction::User(user) => self.run.user = Some(user.clone()),
            Instruction::Env(pairs) => {
                for (key, value) in pairs {
                    let entry = format!("{key}={value}");
                    let prefix = format!("{key}=");
                    match self.run.env.iter_mut().find(|e| e.starts_with(&prefix)) {
                        Some(existing) => *existing = entry,
                        None => self.run.env.push(entry),
                    }
                }
            }
            Instruction::Workdir(dir) => {
                self.workdir = image_path(&self.workdir, dir);
                if !self.workdir.is_empty() {
                    let dir = self.workdir.clone();
                    self.put(line, &dir, LayerEntry::Dir { mode: DIR_MODE })?;
                }
                self.run.working_dir = Some(format!("/{}", self.workdir));
            }
            Instruction::Label(pairs) => {
                for (key, value) in pairs {
                    self.run.labels.insert(key.clone(), value.clone());
                }
            }
        }
        Ok(())
    }

    fn copy(&mut self, line: usize, copy: &Copy) -> Result<(), BuildError> {
        let dest = image_path(&self.workdir, &copy.dest);
        let dest_is_dir = copy.dest.ends_with('/')
            || copy.sources.len() > 1
            || self.tree.get(&dest).is_some_and(LayerEntry::is_dir);
        for src in &copy.sources {
            let rel = context_path(src).ok_or_else(|| BuildError::SourceOutside {
                line,
                src: src.clone(),
            })?;
            let host = self.context.join(&rel);
            // A source that is a symlink is followed, but only to somewhere in the context.
            let resolved = fs::canonicalize(&host).map_err(|source| BuildError::SourceMissing {
                line,
                src: src.clone(),
                path: host.clone(),
                source,
            })?;
            if !resolved.starts_with(&self.context) {
                return Err(BuildError::SourceOutside {
                    line,
                    src: src.clone(),
                });
            }
            let meta = metadata(&resolved, fs::metadata(&resolved))?;
            let mode = copy.chmod.unwrap_or(meta.permissions().mode() & 0o7777);
            if meta.is_dir() {
                if !dest.is_empty() {
                    self.put(line, &dest, LayerEntry::Dir { mode })?;
                }
                self.copy_dir(line, &resolved, &dest, copy.chmod)?;
            } else if meta.is_file() {
                let name = rel.rsplit('/').next().unwrap_or(&rel);
                let target = if dest_is_dir || dest.is_empty() {
                    join(&dest, name)
                } else {
                    dest.clone()
                };
                let data = read(&resolved)?;
                self.put(line, &target, LayerEntry::File { mode, data })?;
            } else {
                return Err(BuildError::UnsupportedFile {
                    path: resolved,
                    reason: "only regular files, directories and symlinks can be copied",
                });
            }
        }
        Ok(())
    }

    /// The contents of `dir` into image directory `dest`; symlinks stay symlinks.
    fn copy_dir(
        &mut self,
        line: usize,
        dir: &Path,
        dest: &str,
        chmod: Option<u32>,
    ) -> Result<(), BuildError> {
        let read_err = |source| BuildError::ReadSource {
            path: dir.to_owned(),
            source,
        };
        let mut children = fs::read_dir(dir)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_err)?;
        children.sort();
        for child in children {
            let name = utf8(&child, child.file_name().and_then(|n| n.to_str()))?;
            let target = join(dest, name);
            let meta = metadata(&child, fs::symlink_metadata(&child))?;
            let mode = chmod.unwrap_or(meta.permissions().mode() & 0o7777);
            if meta.file_type().is_symlink() {
                let link = fs::read_link(&child).map_err(|source| BuildError::ReadSource {
                    path: child.clone(),
                    source,
                })?;
                let target_text = utf8(&child, link.to_str())?.to_owned();
                self.put(
                    line,
                    &target,
                    LayerEntry::Symlink {
                        target: target_text,
                    },
                )?;
            } else if meta.is_dir() {
                self.put(line, &target, LayerEntry::Dir { mode })?;
                self.copy_dir(line, &child, &target, chmod)?;
            } else if meta.is_file() {
                let data = read(&child)?;
                self.put(line, &target, LayerEntry::File { mode, data })?;
            } else {
                return Err(BuildError::UnsupportedFile {
                    path: child,
                    reason: "only regular files, directories and symlinks can be copied",
                });
            }
        }
        Ok(())
    }

    /// Inserts `entry` at `path`, creating missing parents (0755).
    fn put(&mut self, line: usize, path: &str, entry: LayerEntry) -> Result<(), BuildError> {
        let conflict = |reason| BuildError::Conflict {
            line,
            path: path.to_owned(),
            reason,
        };
        let components: Vec<&str> = path.split('/').collect();
        for end in 1..components.len() {
            let parent = components[..end].join("/");
            match self.tree.get(&parent) {
                None => {
                    self.tree.insert(parent, LayerEntry::Dir { mode: DIR_MODE });
                }
                Some(e) if e.is_dir() => {}
                Some(_) => return Err(conflict("a parent directory is a file or symlink")),
            }
        }
        match (self.tree.get(path), &entry) {
            (Some(existing), LayerEntry::Dir { .. }) if !existing.is_dir() => {
                Err(conflict("a file or symlink is there already"))
            }
            (Some(existing), _) if existing.is_dir() && !entry.is_dir() => {
                Err(conflict("a directory is there already"))
            }
            _ => {
                self.tree.insert(path.to_owned(), entry);
                Ok(())
            }
        }
    }
}

/// `path` (absolute, or relative to `workdir`) as a normalised image path without leading or
/// trailing `/`; `..` stops at the root, as in Docker.
fn image_path(workdir: &str, path: &str) -> String {
    let mut parts: Vec<&str> = if path.starts_with('/') {
        Vec::new()
    } else {
        workdir.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// A COPY source as a path relative to the context root (a leading `/` is the context root);
/// `None` when it climbs out with `..`.
fn context_path(src: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in src.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(|source| BuildError::ReadSource {
        path: path.to_owned(),
        source,
    })
}

fn metadata(path: &Path, meta: io::Result<fs::Metadata>) -> Result<fs::Metadata, BuildError> {
    meta.map_err(|source| BuildError::ReadSource {
        path: path.to_owned(),
        source,
    })
}

fn utf8<'a>(path: &Path, text: Option<&'a str>) -> Result<&'a str, BuildError> {
    text.ok_or_else(|| BuildError::UnsupportedFile {
        path: path.to_owned(),
        reason: "names and symlink targets in an image must be UTF-8",
    })
}

#[cfg(test)]
mod tests;
