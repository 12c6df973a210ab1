//! Image references, normalised the way containerd and Docker name images: `hello` is
//! `docker.io/library/hello:latest`, `org/hello` is `docker.io/org/hello:latest`, and a first
//! component with a `.` or `:`, or `localhost`, is a registry.

use std::{fmt, str::FromStr};

/// A reference that cannot name an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A fully qualified, tagged image reference: `domain/path:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    domain: String,
    path: String,
    tag: String,
}

impl ImageRef {
    /// Parse and normalise a reference such as `hello`, `org/hello:v1` or
    /// `ghcr.io/org/hello:1.0`. Digest references (`name@sha256:…`) are refused: the digest of a
    /// packed image is only known after packing.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason: &str| ReferenceError {
            reference: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(invalid("it is empty"));
        }
        if input.contains('@') {
            return Err(invalid(
                "digest references are not accepted; give a tag (the digest is computed by pack)",
            ));
        }
        // A tag is a ':' after the last '/' (a ':' before it is a registry port).
        let last_slash = input.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match input[last_slash..].rfind(':') {
            Some(i) => (&input[..last_slash + i], Some(&input[last_slash + i + 1..])),
            None => (input, None),
        };
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first, rest.to_owned())
            }
            _ => (DEFAULT_DOMAIN, name.to_owned()),
        };
        let domain = if domain == LEGACY_DEFAULT_DOMAIN {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_REPO_PREFIX}{path}")
        } else {
            path
        };

        check_domain(domain).map_err(|r| invalid(&r))?;
        for component in path.split('/') {
            check_path_component(component).map_err(|r| invalid(&r))?;
        }
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(invalid("the repository name is longer than 255 characters"));
        }
        let tag = match tag {
            Some(tag) => {
                check_tag(tag).map_err(|r| invalid(&r))?;
                tag
            }
            None => DEFAULT_TAG,
        };
        Ok(ImageRef {
            domain: domain.to_owned(),
            path,
            tag: tag.to_owned(),
        })
    }

    /// The registry, e.g. `docker.io` or `localhost:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry, e.g. `library/hello`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, `latest` when none was given.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `domain/path` without the tag, e.g. `docker.io/library/hello`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.domain, self.path, self.tag)
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// `host[:port]`: DNS labels of letters, digits and `-` separated by `.`.
fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err(format!("registry {domain:?} is not a valid host name"));
    }
    if let Some(port) = port {
        if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("registry {domain:?} has an invalid port"));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(component: &str) -> Result<(), String> {
    let err = || {
        format!(
            "repository component {component:?} must be lowercase letters and digits, \
             separated by '.', '_', '__' or dashes"
        )
    };
    if component.is_empty() {
        return Err("the repository has an empty path component".to_owned());
    }
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // One run of [a-z0-9]+.
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return Err(err());
        }
        if i == bytes.len() {
            return Ok(());
        }
        // One separator.
        let sep_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[sep_start..i];
        let valid = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !valid {
            return Err(err());
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(word);
    if !first_ok || !chars.all(|c| word(c) || c == '.' || c == '-') || tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "tag {tag:?} must be 1-128 of letters, digits, '_', '.', '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        match ImageRef::parse(s) {
            Ok(r) => r.to_string(),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn normalises_like_containerd() {
        let cases = [
            ("hello", "docker.io/library/hello:latest"),
            ("hello:v1", "docker.io/library/hello:v1"),
            ("org/hello", "docker.io/org/hello:latest"),
            ("org/team/hello:1.0", "docker.io/org/team/hello:1.0"),
            ("docker.io/hello", "docker.io/library/hello:latest"),
            ("index.docker.io/org/hello:x", "docker.io/org/hello:x"),
            (
                "docker.io/library/hello:latest",
                "docker.io/library/hello:latest",
            ),
            (
                "ghcr.io/org/hello:1.0.0-rc.1",
                "ghcr.io/org/hello:1.0.0-rc.1",
            ),
            ("ghcr.io/hello", "ghcr.io/hello:latest"),
            ("localhost/hello:dev", "localhost/hello:dev"),
            ("localhost:5000/hello", "localhost:5000/hello:latest"),
            ("localhost:5000/org/hello:v2", "localhost:5000/org/hello:v2"),
            (
                "registry.local:443/a.b/c__d/e-f---g:T_1",
                "registry.local:443/a.b/c__d/e-f---g:T_1",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "input {input}");
        }
    }

    #[test]
    fn exposes_parts() {
        let r = ImageRef::parse("localhost:5000/org/hello:v2").expect("valid");
        assert_eq!(r.domain(), "localhost:5000");
        assert_eq!(r.path(), "org/hello");
        assert_eq!(r.tag(), "v2");
        assert_eq!(r.repository(), "localhost:5000/org/hello");
        let r: ImageRef = "hello".parse().expect("valid");
        assert_eq!(r.tag(), "latest");
    }

    #[test]
    fn rejects_invalid_references() {
        let long_tag = format!("hello:{}", "t".repeat(129));
        let long_name = format!("org/{}", "n".repeat(260));
        let bad = [
            "",
            "Hello",
            "hello:",
            "hello:-x",
            "hello:.x",
            "hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "org//hello",
            "/hello",
            "hello/",
            "org/hel lo",
            "org/-hello",
            "org/hello.",
            "org/he..llo",
            "org/he___llo",
            "ghcr.io:/hello",
            "ghcr..io/hello",
            "localhost:50a0/hello",
            long_tag.as_str(),
            long_name.as_str(),
        ];
        for input in bad {
            let err = ImageRef::parse(input).expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains("invalid image reference"), "{input}: {msg}");
        }
    }
}
