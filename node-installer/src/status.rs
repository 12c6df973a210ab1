//! `status`: what is installed on the node, from the config, the shim file and containerd.
//! Changes nothing.
use std::time::Instant;

use crate::cli::Options;
use crate::node::Node;
use crate::report::{Failure, Report, State};
use crate::shim_install::{sha256_file, shim_version};
use crate::verify;

pub fn status(o: &Options) -> Report {
    let total = Instant::now();
    let mut r = Report::new(State::NotInstalled);
    let Some(node) = Node::for_report(o, &mut r) else {
        r.time("total", total);
        return r;
    };
    r.config_path = Some(node.layout.config.display().to_string());
    let configured = match node
        .read_config()
        .and_then(|c| node.is_configured(c.as_deref()))
    {
        Ok(c) => c,
        Err(e) => {
            r.fail(Failure::NothingChanged, e.reason(), e.to_string());
            r.time("total", total);
            return r;
        }
    };
    r.shim_sha256 = sha256_file(&node.shim_dest).ok();
    r.shim_version = r
        .shim_sha256
        .as_ref()
        .and_then(|_| shim_version(&node.shim_dest));
    let served = if o.skip_verify {
        None
    } else {
        match verify::probe(&node.socket) {
            Ok(s) => {
                r.containerd_version = Some(s.version.clone());
                r.verified = true;
                Some(node.serves_handler(&s))
            }
            Err(_) => None,
        }
    };
    let shim = r.shim_sha256.is_some();
    r.state = match (configured, shim, served) {
        (true, true, Some(true) | None) => State::Installed,
        (false, false, Some(false) | None) => State::NotInstalled,
        _ => State::Partial,
    };
    r.message = format!(
        "config: {}; shim: {}; containerd: {}",
        if configured {
            "has the wasmkube runtime"
        } else {
            "no wasmkube runtime"
        },
        if shim { "installed" } else { "absent" },
        match served {
            Some(true) => "serves the wasmkube handler".to_string(),
            Some(false) => "does not serve the wasmkube handler".to_string(),
            None if o.skip_verify => "not asked (--skip-verify)".to_string(),
            None => format!("unreachable at {}", node.socket.display()),
        }
    );
    r.time("total", total);
    r
}
