//! Limits of the wasi:http server, read from the container's environment.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WASMKUBE_HTTP_REQUEST_TIMEOUT` | `30s` | per-request deadline (guest run time, epoch-enforced); past it the client gets 504 |
//! | `WASMKUBE_HTTP_MAX_CONCURRENT` | 16 per CPU of the container's limit, 4 to 1000 | requests served at once; more get 503 at once (at most [`MAX_INSTANCES`]) |
//! | `WASMKUBE_HTTP_HEADER_TIMEOUT` | `10s` | time a client has to send the request head; then the connection is closed |
//! | `WASMKUBE_HTTP_MAX_BODY` | `16Mi` | largest request body; bigger bodies get 413 |
//! | `WASMKUBE_HTTP_REUSE_MAX_REQUESTS` | unset: no reuse | opt-in instance reuse ([`crate::instance_pool`]): requests one instance serves, 1 to 1000000 |
//! | `WASMKUBE_HTTP_REUSE_MAX_CONCURRENT` | the request concurrency | reusable instances alive at once, 1 to it |
//! | `WASMKUBE_HTTP_REUSE_IDLE_TIMEOUT` | `60s` | how long an idle reusable instance is kept |
//!
//! Durations are `<n>s`, `<n>ms` or a bare number of seconds; sizes are bytes with an optional
//! `Ki`/`Mi`/`Gi` (or `K`/`M`/`G`, also powers of 1024) suffix.
//!
//! The default concurrency follows the container's CPU limit ([`crate::cpu::container_cpus`]:
//! the cgroup quota, or the CPUs the process may run on when there is none), see
//! [`default_max_concurrent`]: `ceil(16 × CPUs)`, at least [`MIN_DEFAULT_CONCURRENT`], at most
//! [`MAX_INSTANCES`]. 0.5 CPU → 8, 2 CPUs → 32, 100m → 4, 64 CPUs → 1000. Requests mostly wait
//! on I/O, so a few per CPU keep it busy; far more only queue up for the CPU past their deadline
//! (each also holds an instance and a share of the memory budget).
use std::time::Duration;

use wasmkube_contract::http::{
    REUSE_IDLE_TIMEOUT_ENV, REUSE_MAX_CONCURRENT_ENV, REUSE_MAX_REQUESTS_ENV,
};

use crate::engine::MAX_INSTANCES;
use crate::error::ShimError;
use crate::instance_pool::InstanceReuse;
use crate::state::GuestConfig;

pub const REQUEST_TIMEOUT_ENV: &str = "WASMKUBE_HTTP_REQUEST_TIMEOUT";
pub const MAX_CONCURRENT_ENV: &str = "WASMKUBE_HTTP_MAX_CONCURRENT";
pub const HEADER_TIMEOUT_ENV: &str = "WASMKUBE_HTTP_HEADER_TIMEOUT";
pub const MAX_BODY_ENV: &str = "WASMKUBE_HTTP_MAX_BODY";

/// Default concurrency per CPU of the container's limit.
pub const CONCURRENT_PER_CPU: f64 = 16.0;
/// The default concurrency never goes below this, however small the CPU limit.
pub const MIN_DEFAULT_CONCURRENT: usize = 4;

/// The default for [`MAX_CONCURRENT_ENV`] under a limit of `cpus` CPUs: `ceil(16 × cpus)`,
/// clamped to [`MIN_DEFAULT_CONCURRENT`]..=[`MAX_INSTANCES`].
pub fn default_max_concurrent(cpus: f64) -> usize {
    let max = MAX_INSTANCES as usize;
    let n = (cpus * CONCURRENT_PER_CPU).ceil();
    if n.is_nan() || n < MIN_DEFAULT_CONCURRENT as f64 {
        MIN_DEFAULT_CONCURRENT
    } else if n >= max as f64 {
        max
    } else {
        n as usize
    }
}

/// The wasi:http server's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long one request may run the guest.
    pub request_timeout: Duration,
    /// Requests in flight at once.
    pub max_concurrent: usize,
    /// How long a client may take to send the request head.
    pub header_timeout: Duration,
    /// Largest request body in bytes.
    pub max_body: u64,
    /// Opt-in instance reuse; `None`: a fresh instance per request.
    pub reuse: Option<InstanceReuse>,
}

/// Most requests `WASMKUBE_HTTP_REUSE_MAX_REQUESTS` may allow one instance.
pub const MAX_REUSE_REQUESTS: u32 = 1_000_000;
/// Default of `WASMKUBE_HTTP_REUSE_IDLE_TIMEOUT`.
pub const DEFAULT_REUSE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl HttpLimits {
    /// The defaults for a container limited to `cpus` CPUs.
    pub fn defaults(cpus: f64) -> Self {
        HttpLimits {
            request_timeout: Duration::from_secs(30),
            max_concurrent: default_max_concurrent(cpus),
            header_timeout: Duration::from_secs(10),
            max_body: 16 << 20,
            reuse: None,
        }
    }

    /// The defaults for the container's CPU limit, overridden by its environment; a malformed
    /// value is an error (a limit silently ignored would be worse than a container that does
    /// not start).
    pub fn from_config(cfg: &GuestConfig) -> Result<Self, ShimError> {
        let cpus = crate::cpu::container_cpus();
        tracing::info!(
            "CPU limit {cpus} → default {MAX_CONCURRENT_ENV}={}",
            default_max_concurrent(cpus)
        );
        Self::from_lookup(|k| cfg.env(k), cpus)
    }

    /// As [`HttpLimits::from_config`], with `env` for the lookup and a limit of `cpus` CPUs.
    pub fn from_lookup<'a>(
        env: impl Fn(&str) -> Option<&'a str>,
        cpus: f64,
    ) -> Result<Self, ShimError> {
        let mut limits = HttpLimits::defaults(cpus);
        let bad = |var: &str, value: &str, detail: &str| ShimError::Config {
            var: var.to_string(),
            value: value.to_string(),
            detail: detail.to_string(),
        };
        if let Some(v) = env(REQUEST_TIMEOUT_ENV) {
            limits.request_timeout =
                parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                    bad(
                        REQUEST_TIMEOUT_ENV,
                        v,
                        "expected a duration such as 30s or 500ms",
                    )
                })?;
        }
        if let Some(v) = env(HEADER_TIMEOUT_ENV) {
            limits.header_timeout =
                parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                    bad(
                        HEADER_TIMEOUT_ENV,
                        v,
                        "expected a duration such as 10s or 500ms",
                    )
                })?;
        }
        if let Some(v) = env(MAX_CONCURRENT_ENV) {
            limits.max_concurrent = instance_count(MAX_CONCURRENT_ENV, v)?;
        }
        if let Some(v) = env(MAX_BODY_ENV) {
            limits.max_body = parse_size(v)
                .ok_or_else(|| bad(MAX_BODY_ENV, v, "expected bytes such as 1048576 or 16Mi"))?;
        }
        limits.reuse = reuse_from_lookup(&env, limits.max_concurrent)?;
        Ok(limits)
    }
}

/// Instance reuse from the environment: on when `WASMKUBE_HTTP_REUSE_MAX_REQUESTS` is set; the
/// other two variables alone are an error (they would silently do nothing). The count of
/// reusable instances never exceeds `max_concurrent`, the requests served at once.
/// `value` of `var` as a number of instances, 1 to [`MAX_INSTANCES`].
fn instance_count(var: &str, value: &str) -> Result<usize, ShimError> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_INSTANCES as usize).contains(n))
        .ok_or_else(|| ShimError::Config {
            var: var.to_string(),
            value: value.to_string(),
            detail: format!("expected a whole number from 1 to {MAX_INSTANCES}"),
        })
}

fn reuse_from_lookup<'a>(
    env: &impl Fn(&str) -> Option<&'a str>,
    max_concurrent: usize,
) -> Result<Option<InstanceReuse>, ShimError> {
    let bad = |var: &str, value: &str, detail: String| ShimError::Config {
        var: var.to_string(),
        value: value.to_string(),
        detail,
    };
    let Some(requests) = env(REUSE_MAX_REQUESTS_ENV) else {
        for var in [REUSE_MAX_CONCURRENT_ENV, REUSE_IDLE_TIMEOUT_ENV] {
            if let Some(v) = env(var) {
                return Err(bad(
                    var,
                    v,
                    format!("instance reuse is off: set {REUSE_MAX_REQUESTS_ENV} to turn it on"),
                ));
            }
        }
        return Ok(None);
    };
    let max_requests = requests
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_REUSE_REQUESTS).contains(n))
        .ok_or_else(|| {
            bad(
                REUSE_MAX_REQUESTS_ENV,
                requests,
                format!("expected a whole number from 1 to {MAX_REUSE_REQUESTS}"),
            )
        })?;
    let max_instances = match env(REUSE_MAX_CONCURRENT_ENV) {
        None => max_concurrent,
        Some(v) => instance_count(REUSE_MAX_CONCURRENT_ENV, v)?.min(max_concurrent),
    };
    let idle_timeout = match env(REUSE_IDLE_TIMEOUT_ENV) {
        None => DEFAULT_REUSE_IDLE_TIMEOUT,
        Some(v) => parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
            bad(
                REUSE_IDLE_TIMEOUT_ENV,
                v,
                "expected a duration such as 60s or 500ms".to_string(),
            )
        })?,
    };
    Ok(Some(InstanceReuse {
        max_requests,
        max_instances,
        idle_timeout,
    }))
}

/// `30s`, `500ms` or `30` (seconds).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.trim().parse::<u64>().ok().map(Duration::from_millis);
    }
    let secs = t.strip_suffix('s').unwrap_or(t).trim();
    secs.parse::<u64>().ok().map(Duration::from_secs)
}

/// `1048576`, `512Ki`, `16Mi`, `1Gi` (`K`, `M`, `G` too, also powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let shift = match unit.trim() {
        "" => 0,
        "K" | "Ki" => 10,
        "M" | "Mi" => 20,
        "G" | "Gi" => 30,
        _ => return None,
    };
    n.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("16Mi"), Some(16 << 20));
        assert_eq!(parse_size("2K"), Some(2048));
        assert_eq!(parse_size("1Gi"), Some(1 << 30));
        assert_eq!(parse_size("1.5Mi"), None);
        assert_eq!(parse_size("Mi"), None);
        assert_eq!(parse_size("99999999999999999999Gi"), None);
    }

    #[test]
    fn env_overrides_defaults_and_bad_values_name_the_variable() {
        let none = HttpLimits::from_lookup(|_| None, 2.0).expect("defaults");
        assert_eq!(none, HttpLimits::defaults(2.0));
        assert_eq!(none.max_concurrent, 32, "16 per CPU");
        let set = HttpLimits::from_lookup(
            |k| match k {
                REQUEST_TIMEOUT_ENV => Some("2s"),
                MAX_CONCURRENT_ENV => Some("4"),
                HEADER_TIMEOUT_ENV => Some("1500ms"),
                MAX_BODY_ENV => Some("1Ki"),
                _ => None,
            },
            2.0,
        )
        .expect("valid");
        assert_eq!(
            set,
            HttpLimits {
                request_timeout: Duration::from_secs(2),
                max_concurrent: 4,
                header_timeout: Duration::from_millis(1500),
                max_body: 1024,
                reuse: None,
            }
        );
        for (var, value) in [
            (REQUEST_TIMEOUT_ENV, "0"),
            (MAX_CONCURRENT_ENV, "0"),
            (MAX_CONCURRENT_ENV, "100000"),
            (HEADER_TIMEOUT_ENV, "soon"),
            (MAX_BODY_ENV, "lots"),
            (REUSE_MAX_REQUESTS_ENV, "0"),
            (REUSE_MAX_REQUESTS_ENV, "2000000"),
            (REUSE_MAX_CONCURRENT_ENV, "4"),
            (REUSE_IDLE_TIMEOUT_ENV, "30s"),
        ] {
            let err = HttpLimits::from_lookup(|k| (k == var).then_some(value), 2.0)
                .expect_err("must be refused");
            let msg = err.to_string();
            assert!(msg.contains(var) && msg.contains(value), "{msg}");
            assert_eq!(err.exit_code(), crate::error::EXIT_CANNOT_RUN);
        }
    }

    #[test]
    fn instance_reuse_is_opt_in_and_bounded_by_the_request_concurrency() {
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
        };
        let on =
            HttpLimits::from_lookup(lookup(&[(REUSE_MAX_REQUESTS_ENV, "50")]), 1.0).expect("valid");
        assert_eq!(
            on.reuse,
            Some(InstanceReuse {
                max_requests: 50,
                max_instances: 16,
                idle_timeout: DEFAULT_REUSE_IDLE_TIMEOUT,
            }),
            "by default every request slot may hold a reusable instance"
        );
        let set = HttpLimits::from_lookup(
            lookup(&[
                (REUSE_MAX_REQUESTS_ENV, "3"),
                (REUSE_MAX_CONCURRENT_ENV, "900"),
                (REUSE_IDLE_TIMEOUT_ENV, "1500ms"),
                (MAX_CONCURRENT_ENV, "8"),
            ]),
            1.0,
        )
        .expect("valid");
        assert_eq!(
            set.reuse,
            Some(InstanceReuse {
                max_requests: 3,
                max_instances: 8,
                idle_timeout: Duration::from_millis(1500),
            }),
            "never more reusable instances than requests served at once"
        );
        let err = HttpLimits::from_lookup(lookup(&[(REUSE_IDLE_TIMEOUT_ENV, "30s")]), 1.0)
            .expect_err("reuse settings without reuse");
        assert!(err.to_string().contains(REUSE_MAX_REQUESTS_ENV), "{err}");
    }

    #[test]
    fn default_concurrency_follows_the_cpu_limit() {
        for (cpus, expected) in [
            (0.1, 4),
            (0.25, 4),
            (0.5, 8),
            (1.0, 16),
            (1.5, 24),
            (2.0, 32),
            (4.0, 64),
            (62.5, 1000),
            (64.0, 1000),
            (f64::INFINITY, 1000),
            (0.0, 4),
            (f64::NAN, 4),
        ] {
            assert_eq!(default_max_concurrent(cpus), expected, "{cpus} CPUs");
            assert_eq!(HttpLimits::defaults(cpus).max_concurrent, expected);
        }
        // The variable still wins, in both directions.
        let env = |v: &'static str| move |k: &str| (k == MAX_CONCURRENT_ENV).then_some(v);
        let low = HttpLimits::from_lookup(env("2"), 8.0).expect("valid");
        assert_eq!(low.max_concurrent, 2);
        let high = HttpLimits::from_lookup(env("500"), 0.5).expect("valid");
        assert_eq!(high.max_concurrent, 500);
    }
}
