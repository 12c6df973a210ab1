//! Rules the CRD schema cannot express: a failure becomes a `Degraded` condition, not an error.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{image, ServiceType, WasmAppSpec};

impl WasmAppSpec {
    /// Rules the CRD schema cannot express. Each entry is a human-readable problem.
    pub fn validate(&self, name: &str) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.service_config().type_ != ServiceType::None && !is_dns1035_label(name) {
            problems.push(format!(
                "name {name:?} cannot name a Service: it must be a DNS-1035 label (lower-case \
                 letters, digits and '-', starting with a letter, at most 63 characters); \
                 rename the WasmApp or set service.type: None"
            ));
        } else if name.len() > 63 {
            problems.push(format!(
                "name {name:?} is longer than 63 characters and cannot be a label value"
            ));
        }
        if self.image.trim() != self.image || self.image.contains(char::is_whitespace) {
            problems.push(format!("image {:?} contains whitespace", self.image));
        } else if self.image.chars().any(|c| c.is_ascii_uppercase())
            && !self.image.contains('@')
            && image::repository(&self.image)
                .chars()
                .any(|c| c.is_ascii_uppercase())
        {
            problems.push(format!(
                "image {:?}: repository names must be lower-case",
                self.image
            ));
        }
        for key in self.node_selector.keys() {
            if !is_qualified_name(key) {
                problems.push(format!("nodeSelector key {key:?} is not a valid label key"));
            }
        }
        if let Some(a) = &self.autoscaling {
            if a.min_replicas > a.max_replicas {
                problems.push(format!(
                    "autoscaling.minReplicas ({}) exceeds maxReplicas ({})",
                    a.min_replicas, a.max_replicas
                ));
            }
            let has_cpu =
                |m: Option<&BTreeMap<String, Quantity>>| m.is_some_and(|m| m.contains_key("cpu"));
            let r = self.resources.as_ref();
            if !has_cpu(r.and_then(|r| r.requests.as_ref()))
                && !has_cpu(r.and_then(|r| r.limits.as_ref()))
            {
                problems.push(
                    "autoscaling on CPU needs resources.requests.cpu (or limits.cpu)".to_string(),
                );
            }
        }
        let port = self.target_port();
        if let Some(probes) = &self.probes {
            for (which, p) in [
                ("liveness", &probes.liveness),
                ("readiness", &probes.readiness),
                ("startup", &probes.startup),
            ] {
                if let Some(p) = p {
                    if !p.path.starts_with('/') {
                        problems.push(format!("probes.{which}.path must start with '/'"));
                    }
                    if p.port.is_some_and(|p| p != port) {
                        problems.push(format!(
                            "probes.{which}.port {} differs from the app's port {port}: a wasm \
                             app serves one port",
                            p.port.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        if self
            .env
            .iter()
            .any(|e| e.name == wasmkube_contract::GRANTS_ENV)
        {
            problems.push(format!(
                "env {} is reserved for the grants the operator writes; grant through \
                 spec.outbound",
                wasmkube_contract::GRANTS_ENV
            ));
        }
        if let Some(outbound) = &self.outbound {
            for (i, entry) in outbound.allowed_hosts.iter().enumerate() {
                if let Err(e) = wasmkube_contract::HostGrant::parse(entry) {
                    problems.push(format!("outbound.allowedHosts[{i}]: {e}"));
                }
            }
            for (i, net) in outbound.blocked_networks.iter().enumerate() {
                let ok =
                    net.parse::<ipnet::IpNet>().is_ok() || net.parse::<std::net::IpAddr>().is_ok();
                if !ok {
                    problems.push(format!(
                        "outbound.blockedNetworks[{i}]: {net:?} is not a CIDR or an address"
                    ));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let mut paths = std::collections::BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            if !names.insert(v.name.as_str()) {
                problems.push(format!("volumes[{i}]: the name {:?} is used twice", v.name));
            }
            if !paths.insert(v.mount_path.trim_end_matches('/')) {
                problems.push(format!(
                    "volumes[{i}]: the mountPath {:?} is used twice",
                    v.mount_path
                ));
            }
        }
        let mut stores = std::collections::BTreeSet::new();
        for (i, kv) in self.key_value.iter().enumerate() {
            if !stores.insert(kv.name.as_str()) {
                problems.push(format!(
                    "keyValue[{i}]: the name {:?} is used twice",
                    kv.name
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// RFC 1035 label: what a Service name must be.
pub fn is_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A label key: optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && part.ends_with(|c: char| c.is_ascii_alphanumeric())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}
