//! A temp host root with a live containerd on it, and the installer binary run against it:
//! shared by the live installer tests.
#![allow(dead_code)] // each test crate uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wasmkube_test_harness::containerd::default_config;
use wasmkube_test_harness::cri::{ContainerSpec, Cri, PodSpec};
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::images::{pack, pause_archive};
use wasmkube_test_harness::{shim_binary, unique_id, Containerd};

pub const INSTALLER: &str = env!("CARGO_BIN_EXE_wasmkube-node-installer");
pub const HELLO: &str = "docker.io/wasmkube/hello:installer";

/// Where the config's real file is when `/etc/containerd/config.toml` is a symlink.
pub const REAL_CONFIG: &str = "etc/containerd/real/config.toml";

/// A host root with a containerd config and a containerd running on it.
pub struct Host {
    pub root: tempfile::TempDir,
    pub ctd: Containerd,
    pub original: Vec<u8>,
    /// The config file containerd reads (the target when the host's path is a link).
    config_file: PathBuf,
}

impl Host {
    /// Debian's containerd (1.6) on a schema-2 config.
    pub fn start() -> Host {
        Host::start_with(default_config, None, |_| {})
    }

    /// Debian's containerd (1.6) on a schema-2 config at [`REAL_CONFIG`], with the host's
    /// `/etc/containerd/config.toml` an absolute symlink to `/etc/containerd/real/config.toml`:
    /// meaningful only inside the host root, so containerd (which does not run chrooted here)
    /// is started on the target, as the host's containerd would read it.
    pub fn start_symlinked() -> Host {
        Host::start_at(default_config, None, REAL_CONFIG, |root| {
            std::os::unix::fs::symlink(
                Path::new("/").join(REAL_CONFIG),
                root.join("etc/containerd/config.toml"),
            )
            .expect("symlink");
        })
    }

    /// containerd 2.x from `bin` on a schema-4 config; `prepare` runs on the host root before
    /// containerd starts.
    pub fn start_containerd2(bin: PathBuf, prepare: impl FnOnce(&Path)) -> Host {
        Host::start_with(
            wasmkube_test_harness::containerd::default_config_v4,
            Some(bin),
            prepare,
        )
    }

    fn start_with(
        config_text: fn(&Path, bool) -> String,
        bin: Option<PathBuf>,
        prepare: impl FnOnce(&Path),
    ) -> Host {
        Host::start_at(config_text, bin, "etc/containerd/config.toml", prepare)
    }

    fn start_at(
        config_text: fn(&Path, bool) -> String,
        bin: Option<PathBuf>,
        config_at: &str,
        prepare: impl FnOnce(&Path),
    ) -> Host {
        let root = tempfile::Builder::new()
            .prefix("wk-host-")
            .tempdir_in("/var/tmp")
            .expect("host root");
        let config = root.path().join(config_at);
        std::fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
        let text = config_text(root.path(), false);
        std::fs::write(&config, &text).expect("config");
        prepare(root.path());
        // containerd finds the shim by name on its PATH through the installer's link in
        // `<host>/usr/local/bin` (containerd 1.6 ignores `runtime_path` for pod sandboxes).
        let mut builder = Containerd::builder().config_file(&config);
        if let Some(bin) = bin {
            builder = builder.path_dir(bin);
        }
        let ctd = builder.path_dir(root.path().join("usr/local/bin")).start();
        Host {
            root,
            ctd,
            original: text.into_bytes(),
            config_file: config,
        }
    }

    /// The config file containerd reads.
    pub fn config(&self) -> PathBuf {
        self.config_file.clone()
    }

    pub fn shim_dest(&self) -> PathBuf {
        self.root
            .path()
            .join("opt/wasmkube/bin/containerd-shim-wasmkube-v1")
    }

    pub fn result_file(&self) -> PathBuf {
        self.root.path().join("termination-log")
    }

    /// Runs the installer binary; returns the exit code, the stdout JSON and the elapsed time.
    /// `--shim`, `--runtime-path` and `--check-module` in `extra` replace the defaults (the built
    /// shim, installed under the host root; the hello guest, which exits with `$WK_EXIT`). The
    /// wasm check is on, as on a node; this containerd sees the host root at its real path.
    pub fn installer(
        &self,
        verb: &str,
        restart_cmd: &str,
        extra: &[&str],
    ) -> (i32, serde_json::Value, Duration) {
        // Built (or waited for) before the clock starts: the elapsed time is the installer's.
        let mut cmd = self.installer_command(verb, restart_cmd, extra);
        let start = Instant::now();
        let out = cmd.output().expect("run installer");
        let elapsed = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| {
                panic!(
                    "no JSON result ({e}): {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.result_file()).expect("result file"))
                .expect("result file JSON");
        assert_eq!(file, json, "result file and stdout differ");
        (out.status.code().unwrap_or(-1), json, elapsed)
    }

    /// The installer's command line, as [`Host::installer`] runs it.
    pub fn installer_command(&self, verb: &str, restart_cmd: &str, extra: &[&str]) -> Command {
        let shim = shim_binary();
        let module = check_module();
        let mut cmd = Command::new(INSTALLER);
        cmd.arg(verb)
            .arg("--host-root")
            .arg(self.root.path())
            .arg("--restart-cmd")
            .arg(restart_cmd)
            .arg("--containerd-address")
            .arg(self.ctd.address())
            .arg("--result-file")
            .arg(self.result_file());
        if !extra.contains(&"--shim") {
            cmd.arg("--shim").arg(shim);
        }
        if !extra.contains(&"--runtime-path") {
            cmd.arg("--runtime-path").arg(self.shim_dest());
        }
        if !extra.contains(&"--check-module") {
            cmd.arg("--check-module").arg(&module);
        }
        cmd.arg("--host-root-for-containerd").arg(self.root.path());
        cmd.args(extra);
        cmd
    }

    /// The images [`Host::run_hello_pod`] needs: the sandbox image and [`HELLO`]. Returns the
    /// work dir. (The installer's wasm check needs no image: it runs the module from a host
    /// directory, in its own containerd namespace.)
    pub fn import_pod_images(&self) -> tempfile::TempDir {
        let pause = pause_archive().as_ref().unwrap_or_else(|e| panic!("{e}"));
        self.ctd.import("k8s.io", pause).ok();
        let work = tempfile::tempdir().expect("tmp");
        let archive = work.path().join("hello.tar");
        pack(&guest("hello"), HELLO, &archive);
        self.ctd.import("k8s.io", &archive).ok();
        work
    }

    /// Runs the hello guest ([`HELLO`]) as a CRI pod with `runtime_handler: wasmkube`, checks
    /// that it exits 0 and logs its greeting, then removes the pod.
    pub fn run_hello_pod(&self, log_dir: &Path, name: &str) {
        let mut cri = Cri::connect(&self.ctd.address()).expect("CRI");
        let pod = PodSpec {
            name: unique_id(name),
            handler: "wasmkube".into(),
            host_network: true,
            log_dir: log_dir.to_path_buf(),
            cgroup_parent: None,
        };
        let pod_id = cri
            .run_pod(&pod)
            .expect("RunPodSandbox with runtime_handler wasmkube");
        let spec = ContainerSpec {
            name: "hello".into(),
            image: HELLO.into(),
            ..Default::default()
        };
        let hello = cri
            .run_to_exit(&pod_id, &pod, &spec, Duration::from_secs(30))
            .expect("the hello container runs to exit");
        assert_eq!(hello.code, 0, "{}", hello.text());
        assert!(hello.text().contains("hello from wasm"), "{}", hello.text());
        cri.remove_pod(&pod_id).expect("RemovePodSandbox");
    }

    pub fn restart_cmd(&self) -> String {
        self.ctd.restart_script().display().to_string()
    }

    pub fn status_info(&self) -> String {
        Cri::connect(&self.ctd.address())
            .expect("CRI")
            .status_info()
            .expect("status")
    }

    /// Runs the installer's `check --repeat N` verb against this host's containerd: the exit
    /// code, the stdout lines before the JSON, and the JSON.
    pub fn check(&self, repeat: u32, extra: &[&str]) -> (i32, Vec<String>, serde_json::Value) {
        let module = check_module();
        let out = Command::new(INSTALLER)
            .arg("check")
            .arg("--repeat")
            .arg(repeat.to_string())
            .arg("--host-root")
            .arg(self.root.path())
            .arg("--host-root-for-containerd")
            .arg(self.root.path())
            .arg("--containerd-address")
            .arg(self.ctd.address())
            .arg("--result-file")
            .arg(self.result_file())
            .arg("--check-module")
            .arg(&module)
            .args(extra)
            .output()
            .expect("run installer check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines: Vec<String> = stdout.lines().map(str::to_string).collect();
        let json = lines.pop().unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| {
            panic!(
                "no JSON result ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), lines, json)
    }

    /// Whether containerd's live CRI config has our runtime (the pause image is also named
    /// `wasmkube.test/...`, so look for the runtime type).
    pub fn serves_handler(&self) -> bool {
        self.status_info().contains("io.containerd.wasmkube.v1")
    }
}

/// The wasm check's module in the tests: the hello guest, which exits with `$WK_EXIT` (the
/// installer image ships the same guest as its `check.wasm`).
pub fn check_module() -> PathBuf {
    guest("hello")
}

/// A shim that runs containers but not wasm: runc's own shim, installed as ours.
pub fn runc_shim() -> PathBuf {
    wasmkube_test_harness::which("containerd-shim-runc-v2")
        .expect("containerd-shim-runc-v2 (it comes with containerd)")
}

/// A rootfs with static busybox, for a runc container.
pub fn busybox_rootfs() -> tempfile::TempDir {
    let busybox =
        wasmkube_test_harness::which("busybox").expect("busybox (apt-get install busybox-static)");
    wasmkube_test_harness::containerd::rootfs_with(&[("busybox", &busybox)])
}
