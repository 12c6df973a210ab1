//! Image references as the kubelet reads them: repository, tag, digest, and the pull policy a
//! Pod gets when none is set.

use super::ImagePullPolicy;

/// `(repository, tag, digest)` of `image`: `host:5000/team/app:v1@sha256:…`. A `:` counts as a
/// tag separator only after the last `/`, so a registry port is never a tag.
pub fn split(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (&name[..at], Some(&name[at + 1..]), digest)
        }
        None => (name, None, digest),
    }
}

/// The repository part of an image reference (without tag or digest).
pub fn repository(image: &str) -> &str {
    split(image).0
}

/// Kubernetes' default `imagePullPolicy` (core/v1 `SetDefaults_Container`): `Always` when the
/// tag is `latest`, or when there is neither a tag nor a digest (the tag then defaults to
/// `latest`); `IfNotPresent` otherwise.
pub fn default_pull_policy(image: &str) -> ImagePullPolicy {
    let tag = match split(image) {
        (_, None, None) => Some("latest"),
        (_, tag, _) => tag,
    };
    if tag == Some("latest") {
        ImagePullPolicy::Always
    } else {
        ImagePullPolicy::IfNotPresent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ImagePullPolicy::{Always, IfNotPresent};

    const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn splits_repository_tag_and_digest() {
        assert_eq!(split("hello"), ("hello", None, None));
        assert_eq!(split("hello:v1"), ("hello", Some("v1"), None));
        assert_eq!(
            split("docker.io/wasmkube/hello-http:0.1.0"),
            ("docker.io/wasmkube/hello-http", Some("0.1.0"), None)
        );
        assert_eq!(
            split("localhost:5000/app"),
            ("localhost:5000/app", None, None)
        );
        assert_eq!(
            split("localhost:5000/team/app:v2"),
            ("localhost:5000/team/app", Some("v2"), None)
        );
        let pinned = format!("registry:5000/app:v3@{DIGEST}");
        assert_eq!(
            split(&pinned),
            ("registry:5000/app", Some("v3"), Some(DIGEST))
        );
        let digest_only = format!("registry:5000/app@{DIGEST}");
        assert_eq!(
            split(&digest_only),
            ("registry:5000/app", None, Some(DIGEST))
        );
        assert_eq!(repository("registry:5000/app:v3"), "registry:5000/app");
    }

    #[test]
    fn default_pull_policy_follows_kubernetes() {
        let cases = [
            ("docker.io/wasmkube/hello-http:latest", Always),
            ("docker.io/wasmkube/hello-http", Always),
            ("hello", Always),
            // A registry port is not a tag: still untagged, so `latest`.
            ("localhost:5000/hello", Always),
            ("localhost:5000/team/hello", Always),
            ("localhost:5000/hello:latest", Always),
            ("docker.io/wasmkube/hello-http:0.1.0", IfNotPresent),
            ("localhost:5000/hello:v1", IfNotPresent),
            // Tags are case-sensitive: only `latest` is special.
            ("hello:Latest", IfNotPresent),
            ("hello:latest-rc", IfNotPresent),
        ];
        for (image, want) in cases {
            assert_eq!(default_pull_policy(image), want, "{image}");
        }
        // A digest pins the content: no tag means no implied `latest`.
        assert_eq!(
            default_pull_policy(&format!("hello@{DIGEST}")),
            IfNotPresent
        );
        assert_eq!(
            default_pull_policy(&format!("localhost:5000/hello@{DIGEST}")),
            IfNotPresent
        );
        // Kubernetes looks at the tag even when a digest is present.
        assert_eq!(
            default_pull_policy(&format!("hello:latest@{DIGEST}")),
            Always
        );
        assert_eq!(
            default_pull_policy(&format!("hello:v1@{DIGEST}")),
            IfNotPresent
        );
    }
}
