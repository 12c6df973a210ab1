//! The Dockerfile subset `wasmkube image build` interprets: exactly what a `FROM scratch` image
//! of prebuilt files needs, so that `docker build` and `wasmkube image build` of the same file
//! and context give the same file layout.
//!
//! Accepted: `FROM scratch` (first, once), `COPY [--chmod=OCTAL] SRC... DEST` (plain or JSON
//! form), `ENTRYPOINT` and `CMD` in JSON form, `USER`, `ENV KEY=VALUE...`, `WORKDIR`,
//! `LABEL KEY=VALUE...`, comments and `\` line continuations. Everything else — `RUN`, `ADD`,
//! `ARG`, a base image, shell-form commands, `$VARIABLES`, wildcards, other `COPY` flags — is
//! refused with the line it is on, rather than silently built differently from Docker.

/// A parsed Dockerfile: its instructions after `FROM scratch`, each with its line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub instructions: Vec<(usize, Instruction)>,
}

/// One supported instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    Copy(Copy),
    Entrypoint(Vec<String>),
    Cmd(Vec<String>),
    User(String),
    Env(Vec<(String, String)>),
    Workdir(String),
    Label(Vec<(String, String)>),
}

/// `COPY [--chmod=OCTAL] SRC... DEST`: sources are paths in the build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub chmod: Option<u32>,
    pub sources: Vec<String>,
    pub dest: String,
}

/// A Dockerfile line outside the subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} `{text}`: {problem}")]
pub struct DockerfileError {
    /// 1-based; the first line of a continued instruction.
    pub line: usize,
    /// The instruction, shortened.
    pub text: String,
    pub problem: Problem,
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{keyword} is not supported: {why}")]
    Unsupported { keyword: String, why: &'static str },
    #[error("unknown instruction {word:?}")]
    Unknown { word: String },
    #[error(
        "only `FROM scratch` is supported, not {image:?}: the image is the build context's \
         files, with no base image"
    )]
    BaseImage { image: String },
    #[error("the first instruction must be `FROM scratch`")]
    FromFirst,
    #[error("a second FROM: multi-stage builds are not supported")]
    SecondFrom,
    #[error("the Dockerfile has no `FROM scratch`")]
    NoFrom,
    #[error(
        "{keyword} in shell form would run `/bin/sh -c`; use the JSON form, \
         e.g. {keyword} [\"/usr/local/bin/app\"]"
    )]
    ShellForm { keyword: String },
    #[error("{keyword} flag {flag} is not supported (the subset has only COPY --chmod=OCTAL)")]
    Flag { keyword: String, flag: String },
    #[error("{keyword}: variable substitution ($) is not supported")]
    Variable { keyword: String },
    #[error("{keyword}: {reason}")]
    Malformed {
        keyword: String,
        reason: &'static str,
    },
    #[error("parser directive {name:?} is not supported")]
    Directive { name: String },
}

/// Docker's instructions outside the subset, with the reason each is refused.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "RUN",
        "nothing is run at build time; build the files beforehand and COPY them",
    ),
    (
        "ADD",
        "use COPY (ADD's URL downloads and archive extraction are not reproducible)",
    ),
    ("ARG", "build arguments are not supported"),
    ("SHELL", "there is no shell in a scratch image"),
    ("ONBUILD", "images built here are not base images"),
    ("HEALTHCHECK", "Kubernetes probes do this"),
    (
        "EXPOSE",
        "not part of the subset; declare ports in the pod spec",
    ),
    (
        "VOLUME",
        "not part of the subset; declare volumes in the pod spec",
    ),
    ("STOPSIGNAL", "not part of the subset"),
    ("MAINTAINER", "deprecated; use LABEL"),
];

/// Parses `text`, refusing anything outside the subset.
pub fn parse(text: &str) -> Result<Dockerfile, DockerfileError> {
    let mut instructions = Vec::new();
    let mut seen_from = false;
    for (line, logical) in logical_lines(text)? {
        let err = |problem| DockerfileError {
            line,
            text: shorten(&logical),
            problem,
        };
        let (word, rest) = match logical.split_once(char::is_whitespace) {
            Some((word, rest)) => (word, rest.trim()),
            None => (logical.as_str(), ""),
        };
        let keyword = word.to_ascii_uppercase();
        if keyword == "FROM" {
            if seen_from {
                return Err(err(Problem::SecondFrom));
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                ["scratch"] => {}
                [flag, ..] if flag.starts_with("--") => {
                    return Err(err(Problem::Flag {
                        keyword,
                        flag: flag.split('=').next().unwrap_or(flag).to_owned(),
                    }))
                }
                ["scratch", ..] => {
                    return Err(err(malformed("FROM", "stage names (AS) are not supported")))
                }
                _ => {
                    return Err(err(Problem::BaseImage {
                        image: rest.to_owned(),
                    }))
                }
            }
            seen_from = true;
            continue;
        }
        if let Some((_, why)) = UNSUPPORTED.iter().find(|(k, _)| *k == keyword) {
            return Err(err(Problem::Unsupported { keyword, why }));
        }
        let instruction = match keyword.as_str() {
            "COPY" => parse_copy(rest).map(Instruction::Copy),
            "ENTRYPOINT" => json_form(&keyword, rest).map(Instruction::Entrypoint),
            "CMD" => json_form(&keyword, rest).map(Instruction::Cmd),
            "USER" => single_word(&keyword, rest).map(Instruction::User),
            "WORKDIR" => single_word(&keyword, rest).map(Instruction::Workdir),
            "ENV" => key_values(&keyword, rest).map(Instruction::Env),
            "LABEL" => key_values(&keyword, rest).map(Instruction::Label),
            _ => Err(Problem::Unknown {
                word: word.to_owned(),
            }),
        }
        .map_err(err)?;
        if !seen_from {
            return Err(err(Problem::FromFirst));
        }
        instructions.push((line, instruction));
    }
    if !seen_from {
        return Err(DockerfileError {
            line: 1,
            text: String::new(),
            problem: Problem::NoFrom,
        });
    }
    Ok(Dockerfile { instructions })
}

/// Instructions with their first line number: comments and blank lines dropped, `\`
/// continuations joined (comment lines inside a continuation are dropped, as Docker does).
fn logical_lines(text: &str) -> Result<Vec<(usize, String)>, DockerfileError> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    let mut in_directives = true;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if let Some(comment) = trimmed.strip_prefix('#') {
            if in_directives && pending.is_none() {
                if let Some((name, _)) = comment.split_once('=') {
                    let name = name.trim().to_ascii_lowercase();
                    if name == "escape" {
                        return Err(DockerfileError {
                            line,
                            text: shorten(trimmed),
                            problem: Problem::Directive { name },
                        });
                    }
                }
            }
            continue;
        }
        in_directives = false;
        if trimmed.is_empty() {
            continue;
        }
        // A continuation keeps its leading whitespace, as in Docker: `a=b\` then `  c=d` are two words.
        let text = if pending.is_some() {
            raw.trim_end()
        } else {
            trimmed
        };
        let (body, continued) = match text.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (text, false),
        };
        let (start, mut buf) = pending.take().unwrap_or((line, String::new()));
        buf.push_str(body);
        if continued {
            pending = Some((start, buf));
        } else {
            out.push((start, buf.trim().to_owned()));
        }
    }
    if let Some((start, buf)) = pending {
        out.push((start, buf.trim().to_owned()));
    }
    Ok(out)
}

fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn malformed(keyword: &str, reason: &'static str) -> Problem {
    Problem::Malformed {
        keyword: keyword.to_owned(),
        reason,
    }
}

fn parse_copy(rest: &str) -> Result<Copy, Problem> {
    const KW: &str = "COPY";
    let mut rest = rest.trim_start();
    let mut chmod = None;
    while rest.starts_with("--") {
        let (flag, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        match flag.strip_prefix("--chmod=") {
            Some(octal) if chmod.is_none() => {
                let valid = !octal.is_empty()
                    && octal.len() <= 4
                    && octal.bytes().all(|b| (b'0'..=b'7').contains(&b));
                if !valid {
                    return Err(malformed(KW, "--chmod takes an octal mode such as 0755"));
                }
                chmod = u32::from_str_radix(octal, 8).ok();
            }
            _ => {
                return Err(Problem::Flag {
                    keyword: KW.to_owned(),
                    flag: flag.split('=').next().unwrap_or(flag).to_owned(),
                })
            }
        }
        rest = after.trim_start();
    }
    if rest.contains("<<") {
        return Err(malformed(KW, "heredocs are not supported"));
    }
    if rest.contains('$') {
        return Err(Problem::Variable {
            keyword: KW.to_owned(),
        });
    }
    let mut args: Vec<String> = if rest.starts_with('[') {
        serde_json::from_str(rest)
            .map_err(|_| malformed(KW, "the JSON form must be an array of strings"))?
    } else {
        if rest.contains(['"', '\'', '\\']) {
            return Err(malformed(
                KW,
                "quotes and backslashes are only supported in the JSON form [\"src\", \"dest\"]",
            ));
        }
        rest.split_whitespace().map(str::to_owned).collect()
    };
    if args.len() < 2 || args.iter().any(String::is_empty) {
        return Err(malformed(KW, "expected COPY SRC... DEST"));
    }
    let dest = args.pop().unwrap_or_default();
    if args.iter().any(|s| s.contains(['*', '?', '['])) {
        return Err(malformed(KW, "wildcards in sources are not supported"));
    }
    if args.len() > 1 && !dest.ends_with('/') {
        return Err(malformed(
            KW,
            "with several sources the destination must end in /",
        ));
    }
    Ok(Copy {
        chmod,
        sources: args,
        dest,
    })
}

fn json_form(keyword: &str, rest: &str) -> Result<Vec<String>, Problem> {
    if rest.starts_with('[') {
        if let Ok(argv) = serde_json::from_str::<Vec<String>>(rest) {
            return Ok(argv);
        }
    }
    Err(Problem::ShellForm {
        keyword: keyword.to_owned(),
    })
}

fn single_word(keyword: &str, rest: &str) -> Result<String, Problem> {
    if rest.contains('$') {
        return Err(Problem::Variable {
            keyword: keyword.to_owned(),
        });
    }
    if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains(['"', '\'', '\\']) {
        return Err(malformed(
            keyword,
            "expected one word without quotes or backslashes",
        ));
    }
    Ok(rest.to_owned())
}

/// `KEY=VALUE ...` with Docker's quoting: `"..."` (with `\` escapes), `'...'`, `\x`.
fn key_values(keyword: &str, rest: &str) -> Result<Vec<(String, String)>, Problem> {
    let words = split_words(keyword, rest)?;
    if words.is_empty() {
        return Err(malformed(keyword, "expected KEY=VALUE"));
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(malformed(
                keyword,
                "expected KEY=VALUE pairs (the legacy `KEY VALUE` form is not supported)",
            )),
        })
        .collect()
}

fn split_words(keyword: &str, text: &str) -> Result<Vec<String>, Problem> {
    let variable = || Problem::Variable {
        keyword: keyword.to_owned(),
    };
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '$' => return Err(variable()),
            '\\' => {
                let next = chars
                    .next()
                    .ok_or_else(|| malformed(keyword, "a trailing backslash"))?;
                word.get_or_insert_with(String::new).push(next);
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(malformed(keyword, "an unterminated ' quote")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('$') => return Err(variable()),
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(malformed(keyword, "an unterminated \" quote")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(malformed(keyword, "an unterminated \" quote")),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests;
