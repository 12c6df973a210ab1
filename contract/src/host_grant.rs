//! One entry of `allowedHosts`, in Spin's `allowed_outbound_hosts` syntax:
//!
//! | entry | grants |
//! |---|---|
//! | `*` | everything (any scheme, host and port) |
//! | `https://api.example.com` | HTTPS to that host on 443 (the scheme's port when none is given) |
//! | `http://*.default.svc.cluster.local:8080` | HTTP to any subdomain, on 8080 |
//! | `*://db.internal:5432` | any scheme (and raw TCP/UDP) to that host and port |
//! | `redis://cache:6379` | Redis (a raw TCP connection) to `cache` on 6379 |
//! | `*://10.0.0.0/8:*`, `*://[fd00::/8]:80-89` | an address range, any port or a port range |
//!
//! A scheme other than `*` without a well-known port needs an explicit one. Hosts match without
//! regard to case; `*.example.com` matches its subdomains, not `example.com` itself.
use std::net::IpAddr;

use ipnet::IpNet;

/// A parsed `allowedHosts` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostGrant {
    /// The entry as written, for messages.
    pub text: String,
    /// `None`: any scheme.
    pub scheme: Option<String>,
    pub host: HostPattern,
    pub port: PortPattern,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
    /// `*.suffix`: the suffix, lowercase, without the `*.`.
    Subdomains(String),
    /// An address or an address range.
    Net(IpNet),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortPattern {
    Any,
    Range(u16, u16),
}

/// Why an `allowedHosts` entry does not parse; the message names the entry.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostGrantError {
    #[error("{0:?}: expected SCHEME://HOST[:PORT] (or `*`)")]
    Shape(String),
    #[error(
        "{0:?}: the scheme must be `*` or letters, digits, `+`, `-`, `.` (starting with a letter)"
    )]
    Scheme(String),
    #[error("{0:?}: the host must be `*`, a DNS name, `*.` and a domain, an IP address or a CIDR")]
    Host(String),
    #[error("{0:?}: the port must be `*`, a number from 1 to 65535 or a range `LOW-HIGH`")]
    Port(String),
    #[error("{0:?}: the scheme has no well-known port; give one (e.g. `:443` or `:*`)")]
    NoPort(String),
    #[error("{0:?}: a grant names a host, not a path, query or user")]
    Path(String),
}

/// The port a scheme implies when an entry gives none.
pub fn default_port(scheme: &str) -> Option<u16> {
    Some(match scheme {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        "redis" | "rediss" => 6379,
        "postgres" | "postgresql" => 5432,
        "mysql" => 3306,
        "mqtt" => 1883,
        "mqtts" => 8883,
        _ => return None,
    })
}

impl HostGrant {
    /// Parses one entry.
    pub fn parse(text: &str) -> Result<Self, HostGrantError> {
        let err_text = || text.to_string();
        if text == "*" {
            return Ok(HostGrant {
                text: text.into(),
                scheme: None,
                host: HostPattern::Any,
                port: PortPattern::Any,
            });
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| HostGrantError::Shape(err_text()))?;
        let scheme = match scheme {
            "*" => None,
            s if valid_scheme(s) => Some(s.to_ascii_lowercase()),
            _ => return Err(HostGrantError::Scheme(err_text())),
        };
        if rest.contains(['/', '?', '#', '@']) && !looks_like_cidr(rest) {
            return Err(HostGrantError::Path(err_text()));
        }
        let (host, port) =
            split_host_port(rest).ok_or_else(|| HostGrantError::Shape(err_text()))?;
        let host = parse_host(host).ok_or_else(|| HostGrantError::Host(err_text()))?;
        let port = match port {
            Some(p) => parse_port(p).ok_or_else(|| HostGrantError::Port(err_text()))?,
            None => {
                let p = scheme
                    .as_deref()
                    .and_then(default_port)
                    .ok_or_else(|| HostGrantError::NoPort(err_text()))?;
                PortPattern::Range(p, p)
            }
        };
        Ok(HostGrant {
            text: text.into(),
            scheme,
            host,
            port,
        })
    }

    /// Whether a request with `scheme` to `host` (a name or an address) on `port` is granted.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(scheme))
            && self.host.matches(host)
            && self.port.matches(port)
    }

    /// Whether a raw connection to `addr` on `port` is granted by this entry's address range
    /// (or `*`); entries that name hosts are resolved by the caller.
    pub fn allows_addr(&self, addr: IpAddr, port: u16) -> bool {
        let host = match &self.host {
            HostPattern::Any => true,
            HostPattern::Net(net) => net.contains(&addr),
            HostPattern::Name(_) | HostPattern::Subdomains(_) => false,
        };
        host && self.port.matches(port)
    }

    /// Whether this entry names `net`'s addresses explicitly (an address or range that overlaps
    /// it), which lifts the default block on link-local addresses.
    pub fn names_network(&self, net: &IpNet) -> bool {
        match &self.host {
            HostPattern::Net(n) => n.contains(&net.network()) || net.contains(&n.network()),
            _ => false,
        }
    }
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        let host = host
            .trim_end_matches('.')
            .trim_start_matches('[')
            .trim_end_matches(']');
        match self {
            HostPattern::Any => true,
            HostPattern::Name(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Subdomains(suffix) => {
                let host = host.to_ascii_lowercase();
                host.strip_suffix(suffix.as_str())
                    .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
            }
            HostPattern::Net(net) => host.parse::<IpAddr>().is_ok_and(|a| net.contains(&a)),
        }
    }
}

impl PortPattern {
    pub fn matches(&self, port: u16) -> bool {
        match *self {
            PortPattern::Any => true,
            PortPattern::Range(lo, hi) => (lo..=hi).contains(&port),
        }
    }
}

fn valid_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `10.0.0.0/8`, `10.0.0.0/8:*`, `[fd00::/8]:80`: a slash inside the host part only.
fn looks_like_cidr(rest: &str) -> bool {
    let host = split_host_port(rest).map(|(h, _)| h).unwrap_or(rest);
    host.contains('/') && !rest.contains(['?', '#', '@']) && parse_host(host).is_some()
}

/// `host[:port]`, with `[v6]` hosts in brackets.
fn split_host_port(rest: &str) -> Option<(&str, Option<&str>)> {
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((rest, None)),
    }
}

fn parse_host(host: &str) -> Option<HostPattern> {
    if host == "*" {
        return Some(HostPattern::Any);
    }
    if let Ok(net) = host.parse::<IpNet>() {
        return Some(HostPattern::Net(net));
    }
    if let Ok(addr) = host.parse::<IpAddr>() {
        return Some(HostPattern::Net(IpNet::from(addr)));
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return None;
    }
    let name = name.to_ascii_lowercase();
    Some(if wild {
        HostPattern::Subdomains(name)
    } else {
        HostPattern::Name(name)
    })
}

fn parse_port(text: &str) -> Option<PortPattern> {
    if text == "*" {
        return Some(PortPattern::Any);
    }
    let one = |t: &str| t.parse::<u16>().ok().filter(|p| *p > 0);
    match text.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (one(lo)?, one(hi)?);
            (lo <= hi).then_some(PortPattern::Range(lo, hi))
        }
        None => one(text).map(|p| PortPattern::Range(p, p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(text: &str) -> HostGrant {
        HostGrant::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn spins_forms_parse() {
        assert_eq!(g("*").host, HostPattern::Any);
        let https = g("https://api.example.com");
        assert_eq!(https.scheme.as_deref(), Some("https"));
        assert_eq!(https.host, HostPattern::Name("api.example.com".into()));
        assert_eq!(https.port, PortPattern::Range(443, 443));
        let sub = g("http://*.default.svc.cluster.local:8080");
        assert_eq!(
            sub.host,
            HostPattern::Subdomains("default.svc.cluster.local".into())
        );
        assert_eq!(sub.port, PortPattern::Range(8080, 8080));
        let any = g("*://db.internal:5432");
        assert_eq!(any.scheme, None);
        assert_eq!(g("redis://cache:6379").port, PortPattern::Range(6379, 6379));
        assert_eq!(g("redis://cache").port, PortPattern::Range(6379, 6379));
        let cidr = g("*://10.0.0.0/8:*");
        assert_eq!(
            cidr.host,
            HostPattern::Net("10.0.0.0/8".parse().expect("net"))
        );
        assert_eq!(cidr.port, PortPattern::Any);
        let v6 = g("*://[fd00::/8]:80-89");
        assert_eq!(v6.port, PortPattern::Range(80, 89));
        assert!(v6.allows_addr("fd00::1".parse().expect("ip"), 85));
        assert_eq!(
            g("http://127.0.0.1:8080").host,
            HostPattern::Net("127.0.0.1/32".parse().expect("net"))
        );
        assert_eq!(g("http://[::1]").port, PortPattern::Range(80, 80));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (text, want) in [
            ("ht!tp://x", HostGrantError::Scheme("ht!tp://x".into())),
            (
                "api.example.com",
                HostGrantError::Shape("api.example.com".into()),
            ),
            (
                "*://db.internal",
                HostGrantError::NoPort("*://db.internal".into()),
            ),
            ("tcp://db", HostGrantError::NoPort("tcp://db".into())),
            ("http://x:0", HostGrantError::Port("http://x:0".into())),
            (
                "http://x:70000",
                HostGrantError::Port("http://x:70000".into()),
            ),
            (
                "http://x:90-80",
                HostGrantError::Port("http://x:90-80".into()),
            ),
            (
                "https://x/path",
                HostGrantError::Path("https://x/path".into()),
            ),
            (
                "https://user@x",
                HostGrantError::Path("https://user@x".into()),
            ),
            (
                "http://bad..name",
                HostGrantError::Host("http://bad..name".into()),
            ),
            ("http://-x", HostGrantError::Host("http://-x".into())),
        ] {
            assert_eq!(HostGrant::parse(text), Err(want), "{text}");
        }
        let msg = HostGrant::parse("ht!tp://x").expect_err("bad").to_string();
        assert!(msg.contains("ht!tp://x"), "{msg}");
    }

    #[test]
    fn matching_follows_scheme_host_and_port() {
        let https = g("https://api.example.com");
        assert!(https.allows("https", "API.example.com.", 443));
        assert!(!https.allows("http", "api.example.com", 443));
        assert!(!https.allows("https", "api.example.com", 8443));
        assert!(!https.allows("https", "evil.com", 443));
        let sub = g("http://*.example.com:*");
        assert!(sub.allows("http", "a.example.com", 1));
        assert!(sub.allows("http", "a.b.example.com", 1));
        assert!(!sub.allows("http", "example.com", 1));
        assert!(!sub.allows("http", "badexample.com", 1));
        let all = g("*");
        assert!(all.allows("gopher", "anything", 70));
        assert!(all.allows_addr("169.254.169.254".parse().expect("ip"), 80));
        let name = g("*://db.internal:5432");
        assert!(!name.allows_addr("10.0.0.1".parse().expect("ip"), 5432));
        let net = g("*://10.0.0.0/8:5432");
        assert!(net.allows("postgres", "10.1.2.3", 5432));
        assert!(net.allows_addr("10.1.2.3".parse().expect("ip"), 5432));
        assert!(!net.allows_addr("11.1.2.3".parse().expect("ip"), 5432));
        assert!(!net.allows_addr("10.1.2.3".parse().expect("ip"), 5433));
    }

    #[test]
    fn only_an_address_entry_names_a_network() {
        let link_local: IpNet = "169.254.0.0/16".parse().expect("net");
        assert!(g("http://169.254.169.254").names_network(&link_local));
        assert!(g("*://169.254.0.0/16:*").names_network(&link_local));
        assert!(!g("*").names_network(&link_local));
        assert!(!g("http://metadata.internal").names_network(&link_local));
    }
}
