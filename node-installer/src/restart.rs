//! Restarting containerd so it reads the new config: a systemd restart in the host's namespaces
//! (PID 1's), the host's own restart hook ([`HOST_HOOK`], for hosts without systemd), or an
//! explicit command. Never a signal from us: SIGHUP stops containerd rather than reloading it. Running containers survive a restart because their shims are separate
//! processes (systemd units for containerd use `KillMode=process`).
use std::path::Path;
use std::process::{Command, Stdio};

use crate::flavour::{on_host, Layout};
use crate::host_path;

/// `--restart`
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RestartMode {
    /// systemd when the host runs it (the unit is detected from the flavour), else the host's
    /// restart hook ([`HOST_HOOK`]) when it has one, else an error.
    Auto,
    /// `systemctl restart <unit>` through `nsenter -t 1` (needs `hostPID: true`).
    Systemd,
    /// Do not restart; the handler becomes active at containerd's next restart.
    None,
}

/// What a restart will do, decided before anything is changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartPlan {
    None,
    Systemd {
        unit: String,
    },
    /// The host's executable [`HOST_HOOK`], run chrooted into the host's root.
    HostHook {
        host_root: std::path::PathBuf,
    },
    Command(String),
}

/// A host without systemd (OpenRC, runit, a supervisor script, a test cluster) says how to
/// restart its containerd by providing this executable. It runs as `chroot <host root> HOOK`:
/// the host's files, the host's PIDs (the installer pod is `hostPID`), but the pod's cgroup and
/// network. So it must not start containerd itself (the new daemon would live and die with the
/// installer pod): it stops the running one and returns, and the host's supervisor starts the
/// next. `nsenter -t 1` is not used for it: sandboxed hosts (gVisor, Firecracker inits) refuse
/// to open PID 1's namespaces even to root.
pub const HOST_HOOK: &str = "/etc/wasmkube/restart-containerd";

/// Why containerd could not be restarted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestartError {
    #[error(
        "cannot restart containerd automatically: the host does not run systemd \
         ({} missing) and has no executable {}; pass --restart-cmd or --restart none",
        path,
        HOST_HOOK
    )]
    NoSystemd { path: String },
    #[error("no systemd unit for {flavour} found (looked for {units}); pass --restart-cmd")]
    NoUnit { flavour: String, units: String },
    #[error("--restart none and --restart-cmd contradict each other")]
    Conflict,
    #[error("restart command `{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// Decides how to restart, from the flags, the flavour and the host's files.
pub fn plan(
    mode: RestartMode,
    command: Option<&str>,
    layout: &Layout,
    host_root: &Path,
) -> Result<RestartPlan, RestartError> {
    if let Some(c) = command {
        if mode == RestartMode::None {
            return Err(RestartError::Conflict);
        }
        return Ok(RestartPlan::Command(c.to_string()));
    }
    match mode {
        RestartMode::None => Ok(RestartPlan::None),
        RestartMode::Auto | RestartMode::Systemd => {
            let marker = on_host(host_root, Path::new("/run/systemd/system"));
            let systemd = host_path::follow(host_root, Path::new("/run/systemd/system"))
                .is_ok_and(|p| p.is_dir());
            if mode == RestartMode::Auto && !systemd {
                let hook = host_path::follow(host_root, Path::new(HOST_HOOK));
                if hook.is_ok_and(|h| is_executable(&h)) {
                    return Ok(RestartPlan::HostHook {
                        host_root: host_root.to_path_buf(),
                    });
                }
                return Err(RestartError::NoSystemd {
                    path: marker.display().to_string(),
                });
            }
            let found = layout.units.iter().find(|u| {
                UNIT_DIRS.iter().any(|d| {
                    host_path::exists(host_root, &Path::new(d).join(format!("{u}.service")))
                })
            });
            match found {
                Some(u) => Ok(RestartPlan::Systemd {
                    unit: (*u).to_string(),
                }),
                None => Err(RestartError::NoUnit {
                    flavour: format!("{:?}", layout.flavour).to_lowercase(),
                    units: layout.units.join(", "),
                }),
            }
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl RestartPlan {
    /// Runs the restart; returns whether anything was restarted.
    pub fn run(&self) -> Result<bool, RestartError> {
        let mut cmd = match self {
            RestartPlan::None => return Ok(false),
            RestartPlan::Systemd { unit } => {
                // In PID 1's namespaces (the host's, from a `hostPID` pod).
                let mut c = Command::new("nsenter");
                c.args(["-t", "1", "-m", "-u", "-i", "-n", "-p", "--"])
                    .args(["systemctl", "restart", unit.as_str()]);
                c
            }
            RestartPlan::HostHook { host_root } => {
                let mut c = Command::new("chroot");
                c.arg(host_root).arg(HOST_HOOK);
                c
            }
            RestartPlan::Command(s) => {
                let mut c = Command::new("sh");
                c.args(["-c", s.as_str()]);
                c
            }
        };
        let describe = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RestartError::Failed {
                command: describe.clone(),
                status: "not started".into(),
                stderr: e.to_string(),
            })?;
        crate::crash_point::crash_point("restart");
        let out = child.wait_with_output().map_err(|e| RestartError::Failed {
            command: describe.clone(),
            status: "not waited for".into(),
            stderr: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(RestartError::Failed {
                command: describe,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavour::{layout, Flavour};

    #[test]
    fn plans() {
        let host = tempfile::tempdir().expect("tempdir");
        let l = layout(host.path(), Flavour::K3s);
        assert_eq!(
            plan(RestartMode::Auto, Some("true"), &l, host.path()),
            Ok(RestartPlan::Command("true".into()))
        );
        assert_eq!(
            plan(RestartMode::None, Some("x"), &l, host.path()),
            Err(RestartError::Conflict)
        );
        assert!(matches!(
            plan(RestartMode::Auto, None, &l, host.path()),
            Err(RestartError::NoSystemd { .. })
        ));
        // A host hook that is not executable does not count; an executable one does, for
        // `auto` only (`systemd` insists on systemd).
        let hook = host.path().join(HOST_HOOK.trim_start_matches('/'));
        std::fs::create_dir_all(hook.parent().expect("parent")).expect("mkdir");
        std::fs::write(&hook, "#!/bin/sh\n").expect("hook");
        assert!(matches!(
            plan(RestartMode::Auto, None, &l, host.path()),
            Err(RestartError::NoSystemd { .. })
        ));
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        assert_eq!(
            plan(RestartMode::Auto, None, &l, host.path()),
            Ok(RestartPlan::HostHook {
                host_root: host.path().to_path_buf()
            })
        );
        assert!(matches!(
            plan(RestartMode::Systemd, None, &l, host.path()),
            Err(RestartError::NoUnit { .. })
        ));
        std::fs::remove_file(&hook).expect("rm hook");
        std::fs::create_dir_all(host.path().join("run/systemd/system")).expect("mkdir");
        assert!(matches!(
            plan(RestartMode::Auto, None, &l, host.path()),
            Err(RestartError::NoUnit { .. })
        ));
        std::fs::create_dir_all(host.path().join("etc/systemd/system")).expect("mkdir");
        std::fs::write(host.path().join("etc/systemd/system/k3s-agent.service"), "").expect("unit");
        assert_eq!(
            plan(RestartMode::Auto, None, &l, host.path()),
            Ok(RestartPlan::Systemd {
                unit: "k3s-agent".into()
            })
        );
        let e = RestartPlan::Command("exit 3".into())
            .run()
            .expect_err("exit 3 fails");
        assert!(e.to_string().contains("exit status: 3"), "{e}");
    }
}
