//! Pushing images to and pulling them from OCI distribution registries (`wasmkube push` and
//! `wasmkube pull`), through the oras project's `oci-client`: its blob upload sessions, its
//! digest-checked downloads and its auth (anonymous, HTTP basic, and the registry token flow:
//! a `WWW-Authenticate: Bearer` challenge is answered at the realm it names).
//!
//! - TLS by default; plain HTTP only for a loopback registry (`localhost`, `127.0.0.0/8`,
//!   `[::1]`) or with [`RegistryOptions::insecure`].
//! - Credentials: given ([`Credentials::Basic`]) or from the Docker config file
//!   (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, with its credential helpers),
//!   anonymous when it has none for the registry. A password is never part of an error or of
//!   `Debug` output (this module logs nothing).
//! - A push uploads the blobs the registry lacks, then the manifest's bytes as they are, so the
//!   same image always gets the same manifest digest; the registry's digest is read back and
//!   compared.
//! - A pull checks every blob against its digest and size; an index is resolved to its wasm or
//!   `linux/amd64` manifest.

use std::{fmt, net::IpAddr, time::Duration};

use oci_client::{
    client::{ClientConfig, ClientProtocol},
    errors::OciDistributionError,
    manifest::{
        OciDescriptor, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
        OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
    },
    secrets::RegistryAuth,
    Client, Reference, RegistryOperation,
};
use oci_spec::image::{ImageIndex, ImageManifest};

use crate::{
    layout::{ImageBlobs, ImageBlobsError, ImagePlatform},
    reference::ImageRef,
};

/// Largest manifest or index accepted, as the distribution spec recommends registries enforce.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Per-request limits: connecting, and waiting for the next bytes of a response.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Who to be at the registry.
#[derive(Clone, Default)]
pub enum Credentials {
    /// The Docker config file's entry for the registry, anonymous when there is none.
    #[default]
    DockerConfig,
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::DockerConfig => f.write_str("DockerConfig"),
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    pub credentials: Credentials,
    /// Plain HTTP even when the registry is not a loopback address.
    pub insecure: bool,
}

/// What failed, naming the registry. Never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: {operation} of {reference} refused: 401 Unauthorized ({detail})")]
    Unauthorized {
        registry: String,
        operation: &'static str,
        reference: String,
        detail: String,
    },
    #[error("{registry}: {operation} of {reference} refused: 403 Forbidden ({detail})")]
    Forbidden {
        registry: String,
        operation: &'static str,
        reference: String,
        detail: String,
    },
    #[error("{registry}: {reference} not found (404)")]
    NotFound { registry: String, reference: String },
    #[error("{registry}: digest mismatch for {reference}: {detail}")]
    DigestMismatch {
        registry: String,
        reference: String,
        detail: String,
    },
    #[error("{registry}: {operation} of {reference} failed: {detail}")]
    Failed {
        registry: String,
        operation: &'static str,
        reference: String,
        detail: String,
    },
    #[error("{registry}: {reference} has a manifest of type {media_type}, which {reason}")]
    Unsupported {
        registry: String,
        reference: String,
        media_type: String,
        reason: String,
    },
    #[error("cannot read the credentials for {registry} from the Docker config file: {detail}")]
    Credentials { registry: String, detail: String },
    #[error("the image to push is inconsistent")]
    Image(#[from] ImageBlobsError),
}

/// A finished push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub reference: ImageRef,
    /// `sha256:<hex>`, as the registry reports it.
    pub manifest_digest: String,
    /// Blobs uploaded (the others were in the registry already).
    pub blobs_uploaded: usize,
    pub blobs_total: usize,
}

/// True for `localhost`, `127.0.0.0/8` and `::1`, with or without a port.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The process-wide rustls crypto provider (ring, as in the rest of the workspace); reqwest is
/// built without one of its own.
fn install_crypto_provider() {
    // Err means one is installed already: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct Session {
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
    image: ImageRef,
}

impl Session {
    fn new(image: &ImageRef, opts: &RegistryOptions) -> Result<Self, RegistryError> {
        install_crypto_provider();
        let registry = image.domain().to_owned();
        let protocol = if opts.insecure || is_loopback(&registry) {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..ClientConfig::default()
        };
        Ok(Session {
            client: Client::new(config),
            auth: auth_for(&registry, &opts.credentials)?,
            reference: Reference::with_tag(
                registry,
                image.path().to_owned(),
                image.tag().to_owned(),
            ),
            image: image.clone(),
        })
    }

    fn registry(&self) -> String {
        self.image.domain().to_owned()
    }

    /// Classifies an `oci-client` error by what a user can do about it.
    fn error(&self, operation: &'static str, err: OciDistributionError) -> RegistryError {
        let registry = self.registry();
        let reference = self.image.to_string();
        // A status answered through reqwest's `error_for_status` (HEAD requests have no body).
        let err = match err {
            OciDistributionError::RequestError(e) if e.status().is_some() => {
                let code = e.status().map_or(0, |s| s.as_u16());
                OciDistributionError::ServerError {
                    code,
                    url: e.url().map(ToString::to_string).unwrap_or_default(),
                    message: e
                        .status()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or_default()
                        .to_string(),
                }
            }
            other => other,
        };
        match err {
            OciDistributionError::UnauthorizedError { url } => RegistryError::Unauthorized {
                registry,
                operation,
                reference,
                detail: format!("at {url}"),
            },
            OciDistributionError::AuthenticationFailure(detail) => RegistryError::Unauthorized {
                registry,
                operation,
                reference,
                detail: format!("the token service refused: {}", detail.trim()),
            },
            OciDistributionError::ServerError {
                code: 401, message, ..
            } => RegistryError::Unauthorized {
                registry,
                operation,
                reference,
                detail: registry_message(&message),
            },
            OciDistributionError::ServerError {
                code: 403, message, ..
            } => RegistryError::Forbidden {
                registry,
                operation,
                reference,
                detail: registry_message(&message),
            },
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound {
                registry,
                reference,
            },
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        oci_client::errors::OciErrorCode::Unauthorized
                            | oci_client::errors::OciErrorCode::Denied
                    )
                }) =>
            {
                RegistryError::Unauthorized {
                    registry,
                    operation,
                    reference,
                    detail: envelope.to_string(),
                }
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        oci_client::errors::OciErrorCode::ManifestUnknown
                            | oci_client::errors::OciErrorCode::NameUnknown
                    )
                }) =>
            {
                RegistryError::NotFound {
                    registry,
                    reference,
                }
            }
            OciDistributionError::DigestError(e) => RegistryError::DigestMismatch {
                registry,
                reference,
                detail: e.to_string(),
            },
            other => RegistryError::Failed {
                registry,
                operation,
                reference,
                detail: error_chain(&other),
            },
        }
    }
}

/// The registry's JSON error message, or its text.
fn registry_message(body: &str) -> String {
    let parsed: Option<oci_client::errors::OciEnvelope> = serde_json::from_str(body).ok();
    match parsed {
        Some(envelope) if !envelope.errors.is_empty() => envelope
            .errors
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("; "),
        _ => body.trim().chars().take(200).collect(),
    }
}

/// An error and its sources on one line (a refused connection's reason is in a source).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn auth_for(registry: &str, credentials: &Credentials) -> Result<RegistryAuth, RegistryError> {
    match credentials {
        Credentials::Anonymous => Ok(RegistryAuth::Anonymous),
        Credentials::Basic { username, password } => {
            Ok(RegistryAuth::Basic(username.clone(), password.clone()))
        }
        Credentials::DockerConfig => {
            use docker_credential::{CredentialRetrievalError as E, DockerCredential};
            // Docker Hub's entry is keyed by its v1 URL; every other registry by host[:port].
            let server = if registry == "docker.io" {
                "https://index.docker.io/v1/"
            } else {
                registry
            };
            match docker_credential::get_credential(server) {
                Ok(DockerCredential::UsernamePassword(user, password)) => {
                    Ok(RegistryAuth::Basic(user, password))
                }
                Ok(DockerCredential::IdentityToken(token)) => Ok(RegistryAuth::Bearer(token)),
                // No file, or no entry for this registry: anonymous.
                Err(E::ConfigNotFound | E::ConfigReadError | E::NoCredentialConfigured) => {
                    Ok(RegistryAuth::Anonymous)
                }
                Err(E::HelperFailure { helper, .. }) => Err(RegistryError::Credentials {
                    registry: registry.to_owned(),
                    detail: format!("credential helper docker-credential-{helper} failed"),
                }),
                Err(other) => Err(RegistryError::Credentials {
                    registry: registry.to_owned(),
                    detail: other.to_string(),
                }),
            }
        }
    }
}

/// Pushes `image` as `reference`: the blobs the registry lacks, then the manifest.
pub async fn push(
    image: &ImageBlobs,
    reference: &ImageRef,
    opts: &RegistryOptions,
) -> Result<Pushed, RegistryError> {
    image.checked_manifest()?;
    let session = Session::new(reference, opts)?;
    let (client, r) = (&session.client, &session.reference);
    client
        .auth(r, &session.auth, RegistryOperation::Push)
        .await
        .map_err(|e| session.error("push", e))?;
    let mut uploaded = 0;
    for (digest, bytes) in &image.blobs {
        let exists = client
            .blob_exists(r, digest)
            .await
            .map_err(|e| session.error("push", e))?;
        if !exists {
            client
                .push_blob(r, bytes.clone(), digest)
                .await
                .map_err(|e| session.error("push", e))?;
            uploaded += 1;
        }
    }
    let content_type = image
        .manifest_media_type
        .parse()
        .map_err(|_| RegistryError::Failed {
            registry: session.registry(),
            operation: "push",
            reference: reference.to_string(),
            detail: format!("invalid media type {:?}", image.manifest_media_type),
        })?;
    client
        .push_manifest_raw(r, image.manifest.clone(), content_type)
        .await
        .map_err(|e| session.error("push", e))?;
    let expected = image.manifest_digest();
    let reported = client
        .fetch_manifest_digest(r, &session.auth)
        .await
        .map_err(|e| session.error("push", e))?;
    if reported != expected {
        return Err(RegistryError::DigestMismatch {
            registry: session.registry(),
            reference: reference.to_string(),
            detail: format!("pushed manifest {expected}, the registry serves {reported}"),
        });
    }
    Ok(Pushed {
        reference: reference.clone(),
        manifest_digest: expected,
        blobs_uploaded: uploaded,
        blobs_total: image.blobs.len(),
    })
}

const ACCEPTED_MANIFESTS: [&str; 4] = [
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Pulls `reference`: its manifest (through an index, the wasm or `linux/amd64` entry) and every
/// blob the manifest names, each checked against its digest.
pub async fn pull(
    reference: &ImageRef,
    opts: &RegistryOptions,
) -> Result<ImageBlobs, RegistryError> {
    let session = Session::new(reference, opts)?;
    let client = &session.client;
    let (mut bytes, _) = client
        .pull_manifest_raw(&session.reference, &session.auth, &ACCEPTED_MANIFESTS)
        .await
        .map_err(|e| session.error("pull", e))?;
    let mut manifest_ref = session.reference.clone();
    let unsupported = |media_type: &str, reason: &str| RegistryError::Unsupported {
        registry: session.registry(),
        reference: reference.to_string(),
        media_type: media_type.to_owned(),
        reason: reason.to_owned(),
    };
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(unsupported("(any)", "is larger than 4 MiB"));
    }
    let media_type = manifest_media_type(&bytes);
    if media_type == OCI_IMAGE_INDEX_MEDIA_TYPE || media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE {
        let index = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| unsupported(&media_type, &format!("is not a valid index: {e}")))?;
        let chosen = choose_manifest(&index)
            .ok_or_else(|| unsupported(&media_type, "lists no wasm or linux/amd64 manifest"))?;
        manifest_ref = Reference::with_digest(
            session.reference.registry().to_owned(),
            session.reference.repository().to_owned(),
            chosen,
        );
        (bytes, _) = client
            .pull_manifest_raw(&manifest_ref, &session.auth, &ACCEPTED_MANIFESTS[..2])
            .await
            .map_err(|e| session.error("pull", e))?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(unsupported("(any)", "is larger than 4 MiB"));
        }
    }
    let media_type = manifest_media_type(&bytes);
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| unsupported(&media_type, &format!("is not a valid image manifest: {e}")))?;
    let mut blobs = std::collections::BTreeMap::new();
    for desc in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let descriptor = OciDescriptor {
            media_type: desc.media_type().to_string(),
            digest: desc.digest().to_string(),
            size: i64::try_from(desc.size()).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let mut out = Vec::with_capacity(usize::try_from(desc.size()).unwrap_or(0).min(64 << 20));
        client
            .pull_blob(&manifest_ref, &descriptor, &mut out)
            .await
            .map_err(|e| session.error("pull", e))?;
        blobs.insert(desc.digest().to_string(), out);
    }
    let platform = config_platform(blobs.get(&manifest.config().digest().to_string()));
    let image = ImageBlobs {
        manifest: bytes.to_vec(),
        manifest_media_type: media_type,
        platform,
        blobs,
    };
    image
        .checked_manifest()
        .map_err(|e| RegistryError::DigestMismatch {
            registry: session.registry(),
            reference: reference.to_string(),
            detail: e.to_string(),
        })?;
    Ok(image)
}

/// The `mediaType` a manifest declares, OCI's image manifest when it declares none.
fn manifest_media_type(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_owned())
}

/// The index entry to run: a wasm platform first, then `linux/amd64`.
fn choose_manifest(index: &ImageIndex) -> Option<String> {
    let entries = index.manifests();
    let platform_of = |d: &oci_spec::image::Descriptor| {
        d.platform()
            .as_ref()
            .map(|p| (p.os().to_string(), p.architecture().to_string()))
    };
    entries
        .iter()
        .find(|d| platform_of(d).is_some_and(|(_, arch)| arch == "wasm"))
        .or_else(|| {
            entries
                .iter()
                .find(|d| platform_of(d).is_some_and(|(os, arch)| os == "linux" && arch == "amd64"))
        })
        .map(|d| d.digest().to_string())
}

/// `os`/`architecture` of an image or Wasm artifact config.
fn config_platform(config: Option<&Vec<u8>>) -> Option<ImagePlatform> {
    let value: serde_json::Value = serde_json::from_slice(config?).ok()?;
    Some(ImagePlatform {
        os: value.get("os")?.as_str()?.to_owned(),
        architecture: value.get("architecture")?.as_str()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.8.9.1",
            "[::1]:5000",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "ghcr.io:443",
            "10.0.0.1:5000",
            "localhost.example.com:5000",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials::Basic {
            username: "alice".into(),
            password: "s3cret-pw".into(),
        };
        let text = format!("{c:?}");
        assert!(
            text.contains("alice") && !text.contains("s3cret-pw"),
            "{text}"
        );
    }

    #[test]
    fn index_entry_choice_prefers_wasm_then_linux_amd64() {
        let index = |entries: &[(&str, &str, &str)]| -> ImageIndex {
            serde_json::from_value(serde_json::json!({
                "schemaVersion": 2,
                "manifests": entries.iter().map(|(os, arch, hex)| serde_json::json!({
                    "mediaType": OCI_IMAGE_MEDIA_TYPE,
                    "digest": format!("sha256:{}", hex.repeat(64)),
                    "size": 1,
                    "platform": {"os": os, "architecture": arch}
                })).collect::<Vec<_>>()
            }))
            .expect("index")
        };
        let both = index(&[
            ("linux", "arm64", "a"),
            ("linux", "amd64", "b"),
            ("wasip1", "wasm", "c"),
        ]);
        assert_eq!(
            choose_manifest(&both),
            Some(format!("sha256:{}", "c".repeat(64)))
        );
        let linux = index(&[("linux", "arm64", "a"), ("linux", "amd64", "b")]);
        assert_eq!(
            choose_manifest(&linux),
            Some(format!("sha256:{}", "b".repeat(64)))
        );
        assert_eq!(choose_manifest(&index(&[("linux", "arm64", "a")])), None);
    }

    #[test]
    fn registry_messages_are_read_from_the_error_envelope() {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
        assert_eq!(registry_message(body), "authentication required");
        assert_eq!(registry_message("plain text\n"), "plain text");
    }
}
