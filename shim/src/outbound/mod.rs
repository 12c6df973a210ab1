//! What a guest may reach: the WasmApp's `spec.outbound`, enforced inside the WASI context.
//!
//! - wasi:http requests: [`hooks::OutboundHooks`] checks the scheme, host and port against the
//!   granted hosts, resolves the name itself, refuses blocked addresses, and connects to the
//!   address it checked (so a second DNS answer cannot steer the request elsewhere).
//! - wasi:sockets: [`Policy::allows_socket`] is the WASI context's socket address check: a
//!   connect (TCP) or send (UDP) goes through when an address grant covers it or a granted name
//!   resolves to it, and never to a blocked network.
//! - Name lookups (wasi:sockets ip-name-lookup) are allowed only when something is granted.
//!
//! With no grants nothing is reachable. A refused destination is logged once (on the
//! container's stderr, so `kubectl logs` shows it), naming the grant that would allow it.
pub mod hooks;
pub mod send;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use wasmkube_contract::{HostGrant, HostPattern, Outbound};

use crate::error::ShimError;

/// Networks refused unless an `allowedHosts` entry names them by address: link-local, where
/// cloud metadata services answer.
pub const DEFAULT_BLOCKED: [&str; 2] = ["169.254.0.0/16", "fe80::/10"];
/// How long resolving a granted name may take before the attempt is refused.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Distinct refused destinations logged (then one last line says the rest are not).
const MAX_LOGGED: usize = 256;

/// The grants of one container, parsed.
#[derive(Debug, Default)]
pub struct Policy {
    grants: Vec<HostGrant>,
    blocked: Vec<IpNet>,
    logged: Mutex<HashSet<String>>,
}

impl Policy {
    /// Nothing granted.
    pub fn deny_all() -> Self {
        Policy::default()
    }

    /// The policy of `spec.outbound` (`None`: nothing granted). A bad entry fails the container
    /// with a message naming it: the operator's schema refuses what this refuses, so only a
    /// hand-written pod gets here.
    pub fn new(outbound: Option<&Outbound>) -> Result<Self, ShimError> {
        let Some(outbound) = outbound else {
            return Ok(Policy::deny_all());
        };
        let bad = |detail: String| ShimError::Config {
            var: wasmkube_contract::GRANTS_ENV.into(),
            value: "outbound".into(),
            detail,
        };
        let grants = outbound
            .allowed_hosts
            .iter()
            .map(|h| HostGrant::parse(h).map_err(|e| bad(format!("allowedHosts: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut blocked = outbound
            .blocked_networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| bad(format!("blockedNetworks: {n:?} is not a CIDR")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for net in DEFAULT_BLOCKED {
            let net: IpNet = net.parse().map_err(|_| bad(net.to_string()))?;
            if !grants.iter().any(|g| g.names_network(&net)) {
                blocked.push(net);
            }
        }
        Ok(Policy {
            grants,
            blocked,
            logged: Mutex::default(),
        })
    }

    /// Whether the guest may resolve names.
    pub fn allows_lookups(&self) -> bool {
        !self.grants.is_empty()
    }

    /// The grant that allows a wasi:http request, or why none does.
    pub fn allows_request(&self, scheme: &str, host: &str, port: u16) -> Result<(), String> {
        if self.grants.iter().any(|g| g.allows(scheme, host, port)) {
            return Ok(());
        }
        let want = format!("{scheme}://{}:{port}", bracketed(host));
        Err(self.refused(&want, &want))
    }

    /// The addresses of `candidates` the guest may reach: those outside blocked networks. Logs
    /// a refusal when none is left.
    pub fn reachable(&self, what: &str, candidates: &[SocketAddr]) -> Vec<SocketAddr> {
        let ok: Vec<_> = candidates
            .iter()
            .copied()
            .filter(|a| self.blocked_by(a.ip()).is_none())
            .collect();
        if ok.is_empty() {
            let nets: Vec<String> = candidates
                .iter()
                .filter_map(|a| {
                    self.blocked_by(a.ip())
                        .map(|n| format!("{} in {n}", a.ip()))
                })
                .collect();
            let _ = self.log_once(
                what,
                format!(
                    "{what} refused: it resolves only to blocked networks ({}); list the \
                     address in spec.outbound.allowedHosts to reach a link-local one, or remove \
                     it from spec.outbound.blockedNetworks",
                    nets.join(", ")
                ),
            );
        }
        ok
    }

    /// The WASI socket address check for a connect or datagram to `addr`.
    pub async fn allows_socket(&self, addr: SocketAddr) -> bool {
        let want = format!("tcp/udp {addr}");
        if let Some(net) = self.blocked_by(addr.ip()) {
            let _ = self.log_once(
                &want,
                format!(
                    "{want} refused: {} is in the blocked network {net}",
                    addr.ip()
                ),
            );
            return false;
        }
        if self
            .grants
            .iter()
            .any(|g| g.allows_addr(addr.ip(), addr.port()))
        {
            return true;
        }
        // Granted names with this port: allowed when one resolves to the address.
        for g in &self.grants {
            let HostPattern::Name(name) = &g.host else {
                continue;
            };
            if !g.port.matches(addr.port()) {
                continue;
            }
            let lookup = tokio::net::lookup_host((name.as_str(), addr.port()));
            if let Ok(Ok(found)) = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                if found.into_iter().any(|a| a.ip() == addr.ip()) {
                    return true;
                }
            }
        }
        let hint = format!("*://{}:{}", bracketed(&addr.ip().to_string()), addr.port());
        self.refused(&want, &hint);
        false
    }

    fn blocked_by(&self, ip: IpAddr) -> Option<&IpNet> {
        // An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.blocked.iter().find(|n| n.contains(&ip))
    }

    /// Logs the refusal of `want` (once) and returns the guest-facing reason.
    fn refused(&self, want: &str, grant: &str) -> String {
        let msg = format!(
            "outbound access to {want} denied: no grant allows it (add {grant:?} to the \
             WasmApp's spec.outbound.allowedHosts)"
        );
        let _ = self.log_once(want, msg.clone());
        msg
    }

    /// Prints `line` on the container's stderr the first time `key` is refused.
    fn log_once(&self, key: &str, line: String) -> bool {
        let Ok(mut logged) = self.logged.lock() else {
            return false;
        };
        if logged.len() > MAX_LOGGED || logged.contains(key) {
            return false;
        }
        logged.insert(key.to_string());
        if logged.len() > MAX_LOGGED {
            eprintln!("wasmkube: more than {MAX_LOGGED} destinations refused; no more are logged");
        } else {
            eprintln!("wasmkube: {line}");
        }
        true
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], blocked: &[&str]) -> Policy {
        Policy::new(Some(&Outbound {
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
            blocked_networks: blocked.iter().map(|s| s.to_string()).collect(),
        }))
        .expect("policy")
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn nothing_granted_reaches_nothing() {
        let p = Policy::new(None).expect("policy");
        assert!(!p.allows_lookups());
        assert!(p.allows_request("http", "127.0.0.1", 80).is_err());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        assert!(!rt.block_on(p.allows_socket(addr("127.0.0.1:80"))));
    }

    #[test]
    fn requests_need_a_grant_and_the_refusal_names_one() {
        let p = policy(&["http://127.0.0.1:8080"], &[]);
        assert!(p.allows_lookups());
        assert!(p.allows_request("http", "127.0.0.1", 8080).is_ok());
        let e = p
            .allows_request("http", "127.0.0.1", 8081)
            .expect_err("port");
        assert!(e.contains("http://127.0.0.1:8081"), "{e}");
        assert!(p.allows_request("https", "127.0.0.1", 8080).is_err());
    }

    #[test]
    fn blocked_networks_and_link_local_are_refused_on_the_address() {
        let p = policy(&["*"], &["10.0.0.0/8"]);
        let ok = p.reachable("x", &[addr("10.1.1.1:80"), addr("192.0.2.1:80")]);
        assert_eq!(ok, vec![addr("192.0.2.1:80")]);
        assert!(p.reachable("x", &[addr("169.254.169.254:80")]).is_empty());
        assert!(p.reachable("x", &[addr("[fe80::1]:80")]).is_empty());
        assert!(p.reachable("x", &[addr("[::ffff:10.0.0.1]:80")]).is_empty());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        assert!(!rt.block_on(p.allows_socket(addr("10.0.0.1:5432"))));
        assert!(!rt.block_on(p.allows_socket(addr("169.254.169.254:80"))));
        assert!(rt.block_on(p.allows_socket(addr("192.0.2.1:5432"))));
        // Named explicitly, link-local is reachable.
        let metadata = policy(&["http://169.254.169.254"], &[]);
        assert_eq!(
            metadata.reachable("x", &[addr("169.254.169.254:80")]).len(),
            1
        );
    }

    #[test]
    fn sockets_match_address_grants_and_granted_names_by_resolution() {
        let p = policy(&["*://localhost:5432", "*://192.0.2.0/24:*"], &[]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        assert!(rt.block_on(p.allows_socket(addr("127.0.0.1:5432"))));
        assert!(!rt.block_on(p.allows_socket(addr("127.0.0.1:5433"))));
        assert!(rt.block_on(p.allows_socket(addr("192.0.2.7:1"))));
        assert!(!rt.block_on(p.allows_socket(addr("198.51.100.1:5432"))));
    }

    #[test]
    fn a_destination_is_logged_once() {
        let p = policy(&[], &[]);
        assert!(p.log_once("a", "first".into()));
        assert!(!p.log_once("a", "again".into()));
        assert!(p.log_once("b", "other".into()));
    }

    #[test]
    fn a_bad_grant_names_the_variable_and_the_entry() {
        let e = Policy::new(Some(&Outbound {
            allowed_hosts: vec!["ht!tp://x".into()],
            blocked_networks: vec![],
        }))
        .expect_err("bad");
        let msg = e.to_string();
        assert!(
            msg.contains("WASMKUBE_GRANTS") && msg.contains("ht!tp://x"),
            "{msg}"
        );
    }
}
