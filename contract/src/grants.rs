//! The grants document: what a WasmApp lets its pods do beyond computing.
use serde::{Deserialize, Serialize};

/// Environment variable (in the container's spec, never in the guest's environment) holding the
/// JSON [`Grants`].
pub const GRANTS_ENV: &str = "WASMKUBE_GRANTS";
/// The version of the document this build writes and reads.
pub const GRANTS_API_VERSION: &str = "wasmkube.dev/grants/v1";

/// Everything a pod's guest is granted. Absent parts grant nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grants {
    pub api_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Outbound>,
}

/// Where the guest may connect: `WasmApp.spec.outbound`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbound {
    /// Destinations in Spin's `allowed_outbound_hosts` syntax (see [`crate::HostGrant`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// CIDRs refused even when a granted name resolves into them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_networks: Vec<String>,
}

/// Why a grants document was not taken.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("{GRANTS_ENV} is not a grants document: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("{GRANTS_ENV} is version {found:?}; this shim reads {GRANTS_API_VERSION:?}")]
    Version { found: String },
}

impl Grants {
    /// An empty document of this version: nothing granted.
    pub fn none() -> Self {
        Grants {
            api_version: GRANTS_API_VERSION.into(),
            outbound: None,
        }
    }

    /// The document as it goes into [`GRANTS_ENV`].
    pub fn to_env_value(&self) -> String {
        // A struct of strings always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a document written by [`Grants::to_env_value`] of this version.
    pub fn from_env_value(text: &str) -> Result<Self, GrantsError> {
        let grants: Grants = serde_json::from_str(text)?;
        if grants.api_version != GRANTS_API_VERSION {
            return Err(GrantsError::Version {
                found: grants.api_version,
            });
        }
        Ok(grants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_reads_back_as_written() {
        let g = Grants {
            outbound: Some(Outbound {
                allowed_hosts: vec!["https://api.example.com".into()],
                blocked_networks: vec!["10.0.0.0/8".into()],
            }),
            ..Grants::none()
        };
        let text = g.to_env_value();
        assert_eq!(
            text,
            r#"{"apiVersion":"wasmkube.dev/grants/v1","outbound":{"allowedHosts":["https://api.example.com"],"blockedNetworks":["10.0.0.0/8"]}}"#
        );
        assert_eq!(Grants::from_env_value(&text).expect("reads"), g);
    }

    #[test]
    fn another_version_or_an_unknown_field_is_refused() {
        let e =
            Grants::from_env_value(r#"{"apiVersion":"wasmkube.dev/grants/v9"}"#).expect_err("v9");
        assert!(e.to_string().contains("grants/v9"), "{e}");
        let e = Grants::from_env_value(r#"{"apiVersion":"wasmkube.dev/grants/v1","outbund":{}}"#)
            .expect_err("typo");
        assert!(e.to_string().contains("outbund"), "{e}");
    }
}
