//! A private containerd daemon in a temp dir, with the wasmkube shim on its `PATH`.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shim's containerd runtime type.
pub const RUNTIME_TYPE: &str = wasmkube_contract::names::RUNTIME_TYPE;
/// The CRI runtime handler (and RuntimeClass) name.
pub const HANDLER: &str = wasmkube_contract::names::RUNTIME_HANDLER;
/// Name of the locally built pause image used as the CRI sandbox image.
pub const PAUSE_IMAGE: &str = "wasmkube.test/pause:3.9";

/// The result of a command.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    fn from(out: std::process::Output) -> Self {
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with everything printed unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "command failed: {self:#?}");
        self
    }
}

/// containerd config (schema version 2, containerd 1.6/1.7) for a private daemon: CRI with a
/// `runc` and a `wasmkube` runtime, a local pause image, CNI from `cni_conf_dir`.
pub fn default_config(dir: &Path, with_wasmkube: bool) -> String {
    let cni = dir.join("cni");
    let wasmkube = if with_wasmkube {
        format!(
            "\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{HANDLER}]\n      runtime_type = \"{RUNTIME_TYPE}\"\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"version = 2
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM refuses negative oom_score_adj; without this runc and the shim fail opaquely.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # runc's state here, not in /run/containerd/runc/<namespace>, which the host's
        # containerd (a local cluster's, too) shares.
        Root = "{runc_root}"
{wasmkube}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"

[plugins."io.containerd.internal.v1.opt"]
  # Not the host's /opt/containerd.
  path = "{opt}"
"#,
        cni = cni.display(),
        runc_root = runc_root(dir).display(),
        opt = dir.join("containerd-opt").display(),
    )
}

/// runc's state directory for a private daemon whose config lives in `dir` (the runc runtime's
/// `Root` in [`default_config`]; pass it to `ctr run --runc-root` too).
pub fn runc_root(dir: &Path) -> PathBuf {
    dir.join("runc-root")
}

/// containerd config in schema version 4 (what `containerd config default` of containerd 2.4
/// writes) for a private daemon: the same runtimes, pause image
/// and CNI as [`default_config`], in containerd 2.x's plugin layout.
pub fn default_config_v4(dir: &Path, with_wasmkube: bool) -> String {
    let cni = dir.join("cni");
    let wasmkube = if with_wasmkube {
        format!(
            "\n    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.{HANDLER}]\n      runtime_type = '{RUNTIME_TYPE}'\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"version = 4
disabled_plugins = ['io.containerd.snapshotter.v1.aufs', 'io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs', 'io.containerd.snapshotter.v1.devmapper', 'io.containerd.snapshotter.v1.blockfile', 'io.containerd.snapshotter.v1.erofs', 'io.containerd.tracing.processor.v1.otlp', 'io.containerd.internal.v1.tracing']

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{PAUSE_IMAGE}'

  [plugins.'io.containerd.cri.v1.runtime']
    # This VM refuses negative oom_score_adj; without this runc and the shim fail opaquely.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
          runtime_type = 'io.containerd.runc.v2'
          [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
            Root = '{runc_root}'
{wasmkube}    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dir = '/usr/lib/cni'
      conf_dir = '{cni}'

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.internal.v1.opt']
    path = '{opt}'
"#,
        cni = cni.display(),
        runc_root = runc_root(dir).display(),
        opt = dir.join("containerd-opt").display(),
    )
}

/// The containerd 2.x build for the live tests: `WASMKUBE_CONTAINERD2_BIN` (a directory with
/// `containerd` and `ctr`), else `/var/tmp/wasmkube-containerd2/v2.4.2/bin`
/// (`scripts/containerd2.sh` builds it there from the Go module).
pub fn containerd2_bin_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("WASMKUBE_CONTAINERD2_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wasmkube-containerd2/v2.4.2/bin"));
    dir.join("containerd").is_file().then_some(dir)
}

/// Options for [`Containerd::start`].
#[derive(Default)]
pub struct ContainerdBuilder {
    shim: Option<PathBuf>,
    config: Option<String>,
    config_file: Option<PathBuf>,
    path_dirs: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl ContainerdBuilder {
    /// Puts this shim binary on containerd's `PATH` as `containerd-shim-wasmkube-v1`.
    pub fn shim(mut self, path: impl Into<PathBuf>) -> Self {
        self.shim = Some(path.into());
        self
    }

    /// Uses this config text instead of [`default_config`].
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Runs containerd on this existing config file (not copied, not rewritten): for tests where
    /// something else — the node installer — owns the file and rewrites it between restarts.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Puts this directory on containerd's `PATH` (after the harness's own shim directory), where
    /// containerd looks shims up by name.
    pub fn path_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.path_dirs.push(dir.into());
        self
    }

    /// Adds an environment variable for containerd (and so for its shims).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// First starts compile with Winch and tier up in the background, as on a node. Without
    /// this the harness turns that off (`WASMKUBE_BASELINE_COMPILER=off`), so that a test's
    /// cache holds exactly the entries its starts made, with no background compile racing it.
    pub fn winch_first_starts(self) -> Self {
        self.env(BASELINE_ENV, "winch")
    }

    pub fn start(self) -> Containerd {
        let tmp = tempfile::Builder::new()
            .prefix("wk-ctd-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).expect("bin dir");
        fs::create_dir_all(dir.join("cni")).expect("cni dir");
        if let Some(shim) = &self.shim {
            crate::procs::copy_file(shim, &bin.join("containerd-shim-wasmkube-v1"));
        }
        let config_path = match self.config_file {
            Some(path) => path,
            None => {
                let path = dir.join("config.toml");
                let config = self.config.unwrap_or_else(|| default_config(&dir, true));
                fs::write(&path, config).expect("write config");
                path
            }
        };
        let mut c = Containerd {
            _tmp: tmp,
            dir: dir.clone(),
            config_path,
            path_dirs: self.path_dirs,
            env: self.env,
            process: None,
        };
        c.env.push((
            "WASMKUBE_CACHE_DIR".into(),
            dir.join("cache").display().to_string(),
        ));
        if !c.env.iter().any(|(k, _)| k == BASELINE_ENV) {
            c.env.push((BASELINE_ENV.into(), "off".into()));
        }
        c.write_restart_script();
        c.spawn();
        c
    }
}

/// The shim's switch for Winch first starts (`wasmkube_shim::engine::BASELINE_ENV`).
const BASELINE_ENV: &str = "WASMKUBE_BASELINE_COMPILER";

/// A running private containerd. Dropping it kills its tasks, shims and the daemon.
///
/// The daemon is tracked through a pid file (`<dir>/containerd.pid`), so it keeps working when
/// something outside the test restarts it with [`Containerd::restart_script`].
pub struct Containerd {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config_path: PathBuf,
    path_dirs: Vec<PathBuf>,
    env: Vec<(String, String)>,
    process: Option<Child>,
}

impl Containerd {
    pub fn builder() -> ContainerdBuilder {
        ContainerdBuilder::default()
    }

    /// The daemon's temp dir (config, root, state, logs, cache, cni).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn address(&self) -> PathBuf {
        self.dir.join("ctd.sock")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The compiled-module cache dir the shims use.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// `PATH` as containerd sees it (shim dir first).
    pub fn path_env(&self) -> String {
        let mut dirs = vec![self.dir.join("bin").display().to_string()];
        dirs.extend(self.path_dirs.iter().map(|d| d.display().to_string()));
        dirs.push(std::env::var("PATH").unwrap_or_default());
        dirs.join(":")
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--address")
            .arg(self.address())
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--state")
            .arg(self.dir.join("state"))
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn containerd");
        fs::write(self.pid_file(), child.id().to_string()).expect("pid file");
        self.process = Some(child);
        self.wait_ready(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until the daemon answers; `Err` with its log when it does not.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let current = self.pid();
            if let Some(p) = self.process.as_mut().filter(|p| Some(p.id()) == current) {
                if let Ok(Some(status)) = p.try_wait() {
                    return Err(format!(
                        "containerd exited ({status}):\n{}",
                        self.log_tail()
                    ));
                }
            }
            if self.address().exists() && self.ctr(&["version"]).code == Some(0) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "containerd not ready after {timeout:?}:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the daemon log.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stops the daemon (SIGTERM, then wait). Running containers keep running under their shims.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            if alive(p.id()) {
                signal(p.id() as i32, libc::SIGTERM);
            }
            // Ours or already replaced by an external restart: reap it either way.
            let _ = p.wait();
        }
        // A daemon started by the restart script.
        if let Some(pid) = self.pid() {
            signal(pid as i32, libc::SIGTERM);
            let start = Instant::now();
            while alive(pid) && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                eprintln!(
                    "wasmkube-test-harness: containerd {pid} ({}) still runs 20 s after SIGTERM",
                    self.address().display()
                );
            }
        }
        let _ = fs::remove_file(self.pid_file());
    }

    /// Restarts the daemon with the (possibly rewritten) config file.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The daemon's pid, while it runs (from the pid file, so also after an external restart).
    pub fn pid(&self) -> Option<u32> {
        fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|pid| alive(*pid))
    }

    /// `<dir>/containerd.pid`
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }

    /// A shell script that restarts this daemon the way `systemctl restart` would: stop it by
    /// its pid file (SIGTERM, wait), start it again detached with the same arguments and
    /// environment, wait until it answers, and append a line to [`Self::restart_count`]'s file.
    /// For a node installer's `--restart-cmd`.
    pub fn restart_script(&self) -> PathBuf {
        self.dir.join("restart.sh")
    }

    /// How many times [`Self::restart_script`] has run.
    pub fn restart_count(&self) -> usize {
        fs::read_to_string(self.dir.join("restarts"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn write_restart_script(&self) {
        let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let mut env = format!("export PATH={}\n", q(&self.path_env()));
        for (k, v) in &self.env {
            env.push_str(&format!("export {k}={}\n", q(v)));
        }
        let script = format!(
            r#"#!/bin/sh
# Restarts the test's containerd (written by wasmkube-test-harness).
set -eu
pidfile={pidfile}
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  i=0
  while state=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) && [ "$state" != Z ]; do
    i=$((i+1)); [ $i -lt 400 ] || {{ echo "containerd $pid did not stop within 20 s of SIGTERM (state $state)" >&2; exit 1; }}
    sleep 0.05
  done
fi
{env}setsid containerd --config {config} --address {address} --root {root} --state {state} \
  </dev/null >>{log} 2>&1 &
echo $! > "$pidfile"
i=0
until ctr --address {address} version >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 400 ] || {{ echo "containerd did not come back: no answer on {address} within 20 s; its log ends:" >&2; tail -n 15 {log} >&2; exit 1; }}
  sleep 0.05
done
echo restarted >> {restarts}
"#,
            pidfile = q(&self.pid_file().display().to_string()),
            config = q(&self.config_path.display().to_string()),
            address = q(&self.address().display().to_string()),
            root = q(&self.dir.join("root").display().to_string()),
            state = q(&self.dir.join("state").display().to_string()),
            log = q(&self.log_path().display().to_string()),
            restarts = q(&self.dir.join("restarts").display().to_string()),
        );
        let path = self.restart_script();
        fs::write(&path, script).expect("restart script");
        let mut perms = fs::metadata(&path).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        fs::set_permissions(&path, perms).expect("chmod");
    }

    /// Runs `ctr` against this daemon (namespace `default` unless `-n` is given).
    pub fn ctr(&self, args: &[&str]) -> Output {
        Output::from(self.ctr_command(args).output().expect("run ctr"))
    }

    /// A `ctr` command against this daemon, to spawn or customise.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.address())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Imports an OCI image archive into a namespace.
    pub fn import(&self, namespace: &str, archive: &Path) -> Output {
        let archive = archive.display().to_string();
        self.ctr(&[
            "-n",
            namespace,
            "images",
            "import",
            "--all-platforms",
            &archive,
        ])
    }

    fn cleanup_tasks(&self) {
        for ns in ["default", "k8s.io"] {
            let tasks = self.ctr(&["-n", ns, "tasks", "ls", "-q"]).stdout;
            for id in tasks.lines().filter(|l| !l.is_empty()) {
                self.ctr(&["-n", ns, "tasks", "kill", "-s", "SIGKILL", id]);
                for _ in 0..50 {
                    if self.ctr(&["-n", ns, "tasks", "delete", id]).code == Some(0) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// Whether `pid` runs (a zombie does not count).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

fn signal(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.pid().is_some() {
            self.cleanup_tasks();
        }
        // Shims outlive containerd: kill the ones serving this daemon.
        let addr = self.address().display().to_string();
        if let Ok(procs) = fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.starts_with("containerd-shim") && cmdline.contains(addr.as_str()) {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
        self.stop();
        // Unmount whatever containerd left under the temp dir, deepest first.
        let dir = self.dir.display().to_string();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

/// One `ctr run` of a wasm container.
#[derive(Clone, Debug, Default)]
pub struct CtrRun {
    pub id: String,
    /// `--rootfs DIR` when set, else `image`.
    pub rootfs: Option<PathBuf>,
    pub image: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub memory_limit: Option<u64>,
    /// `(host dir, container dir, read_only)`
    pub mounts: Vec<(PathBuf, String, bool)>,
    pub cwd: Option<String>,
    /// Defaults to the wasmkube runtime.
    pub runtime: Option<String>,
    /// Share the host's network namespace (`--net-host`).
    pub net_host: bool,
    /// Share the host's PID namespace (`--with-ns pid:/proc/1/ns/pid`), as a hostPID pod.
    pub host_pid: bool,
}

impl CtrRun {
    pub fn rootfs(id: impl Into<String>, rootfs: impl Into<PathBuf>, args: &[&str]) -> Self {
        CtrRun {
            id: id.into(),
            rootfs: Some(rootfs.into()),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn image(id: impl Into<String>, image: impl Into<String>, args: &[&str]) -> Self {
        CtrRun {
            id: id.into(),
            image: Some(image.into()),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.into());
        self
    }

    /// The `ctr run --rm ...` argument list.
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), "--rm".into()];
        a.push(format!(
            "--runtime={}",
            self.runtime.as_deref().unwrap_or(RUNTIME_TYPE)
        ));
        for e in &self.env {
            a.push(format!("--env={e}"));
        }
        if let Some(m) = self.memory_limit {
            a.push(format!("--memory-limit={m}"));
        }
        for (src, dst, ro) in &self.mounts {
            let mode = if *ro { "ro" } else { "rw" };
            a.push(format!(
                "--mount=type=bind,src={},dst={dst},options=rbind:{mode}",
                src.display()
            ));
        }
        if let Some(cwd) = &self.cwd {
            a.push(format!("--cwd={cwd}"));
        }
        if self.net_host {
            a.push("--net-host".into());
        }
        if self.host_pid {
            a.push("--with-ns=pid:/proc/1/ns/pid".into());
        }
        match (&self.rootfs, &self.image) {
            (Some(r), _) => {
                a.push("--rootfs".into());
                a.push(r.display().to_string());
            }
            (None, Some(i)) => a.push(i.clone()),
            (None, None) => panic!("CtrRun needs a rootfs or an image"),
        }
        a.push(self.id.clone());
        a.extend(self.args.iter().cloned());
        a
    }
}

impl Containerd {
    /// `ctr run --rm` to completion.
    pub fn run(&self, r: &CtrRun) -> Output {
        let argv = r.argv();
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ctr(&args)
    }

    /// `ctr run --rm` in the background, stdout/stderr piped.
    pub fn spawn_run(&self, r: &CtrRun) -> Child {
        let argv = r.argv();
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ctr_command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ctr run")
    }

    /// The host pid of task `id` (namespace `default`), from `ctr tasks ls`.
    pub fn task_pid(&self, id: &str) -> u32 {
        let ls = self.ctr(&["tasks", "ls"]);
        ls.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no task {id} in `ctr tasks ls`:\n{}", ls.stdout))
    }

    /// The compiled-module cache's entries (`*.cwasm`), sorted.
    pub fn cache_entries(&self) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(self.cache_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits until a task is listed as RUNNING (or `timeout`).
    pub fn wait_running(&self, id: &str, timeout: Duration) -> bool {
        self.wait_task_running(id, timeout).is_ok()
    }

    /// Waits until task `id` (namespace `default`) is listed as RUNNING; `Err` says how long it
    /// waited and what `ctr tasks ls` and the daemon log last showed.
    pub fn wait_task_running(&self, id: &str, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let ls = self.ctr(&["tasks", "ls"]);
            if ls
                .stdout
                .lines()
                .any(|l| l.starts_with(id) && l.contains("RUNNING"))
            {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "task {id} not RUNNING after {timeout:?}; `ctr tasks ls` said:\n{}{}\ncontainerd log:\n{}",
                    ls.stdout,
                    ls.stderr,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits for a `ctr` child (e.g. from [`Containerd::spawn_run`]) to exit; kills it and returns
/// `None` after `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

/// A rootfs directory holding `files` (name → source path) at its root.
pub fn rootfs_with(files: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wk-rootfs-")
        .tempdir_in("/var/tmp")
        .expect("rootfs");
    for (name, src) in files {
        crate::procs::copy_file(src, &dir.path().join(name));
    }
    dir
}
