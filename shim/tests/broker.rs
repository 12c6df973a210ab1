//! The compile broker under a real containerd (`ctr run`): compiled code comes only from the
//! shim's host-side workers, the cache refuses what they did not write, the guest process holds
//! no descriptor of the host's filesystem, no process but the shim daemon holds its containerd
//! socket, the guest maps its entry read-only (Winch code on a first start, Cranelift's once the
//! background tier-up stored it; a module Winch refuses runs from Cranelift code at once), a
//! stop during a long compile is prompt, the compiler is confined (a hostPID root
//! cannot look into it) and a module that fails to compile is not compiled again at each restart.
//! Needs root, containerd and runc; see `wasmkube_test_harness::skip_unless!`.
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmkube_shim::broker::confine::DEFAULT_COMPILER_ID;
use wasmkube_test_harness::containerd::wait_child;
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::procs::{listening_unix_sockets, shim_roles, socket_inodes, status};
use wasmkube_test_harness::wasm_gen::big_module;
use wasmkube_test_harness::{missing_prerequisites, skip_unless, unique_id, Containerd, CtrRun};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-wasmkube-v1");

fn containerd() -> Containerd {
    Containerd::builder().shim(SHIM).start()
}

/// Descriptors of `pid` rooted in the host's filesystem: directory, `O_PATH` or regular-file
/// handles on mounts outside the process's own mount namespace (containerd's stdio and log
/// FIFOs, sockets, pipes, devices and memfds do not resolve to anything a guest could walk).
fn host_rooted_fds(pid: u32) -> Vec<(String, wasmkube_shim::descriptors::FdFacts)> {
    use wasmkube_shim::descriptors::{host_rooted, own_mounts, parse_fdinfo, FdFacts};
    let own =
        own_mounts(&std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo"));
    let mut found = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        let n = fd.file_name().to_string_lossy().to_string();
        let (Ok(link), Ok(info), Ok(meta)) = (
            std::fs::read_link(fd.path()),
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")),
            std::fs::metadata(fd.path()),
        ) else {
            continue;
        };
        let (mnt_id, flags) = parse_fdinfo(&info);
        let facts = FdFacts {
            link: link.display().to_string(),
            mnt_id,
            flags,
            file_type: rustix::fs::FileType::from_raw_mode(meta.mode()),
        };
        if host_rooted(&facts, &own) {
            found.push((n, facts));
        }
    }
    found
}

#[test]
fn the_guest_maps_its_cache_entry_read_only_and_holds_no_other_host_descriptor() {
    skip_unless!(missing_prerequisites());
    // As on a node: the first start runs Winch code and the broker tiers up in the background.
    let ctd = Containerd::builder()
        .shim(SHIM)
        .winch_first_starts()
        .start();
    let root =
        wasmkube_test_harness::containerd::rootfs_with(&[("busyloop.wasm", &guest("busyloop"))]);
    let optimised = || {
        ctd.cache_entries()
            .into_iter()
            .find(|e| !e.to_string_lossy().contains("-winch-"))
    };
    // The first start compiles with Winch (and is handed the entry just stored); the second,
    // once the tier-up has stored Cranelift's code, is a hit on that.
    for (round, tier) in [
        ("first start", "-winch-"),
        ("after the tier-up", "-ondemand-"),
    ] {
        if round == "after the tier-up" {
            let start = Instant::now();
            while optimised().is_none() && start.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let entries = ctd.cache_entries();
            assert!(
                entries.len() == 2 && optimised().is_some(),
                "the tier-up stored optimised code beside the Winch code: {entries:?}"
            );
        }
        let id = unique_id("fds");
        let mut child = ctd.spawn_run(&CtrRun::rootfs(&id, root.path(), &["/busyloop.wasm"]));
        ctd.wait_task_running(&id, Duration::from_secs(30))
            .expect("running");
        // Running wasm (past compilation and instantiation), not only a started task: the
        // program's code is mapped once it was loaded.
        let pid = ctd.task_pid(&id);
        let start = Instant::now();
        let mut code = Vec::new();
        while code.is_empty() && start.elapsed() < Duration::from_secs(180) {
            std::thread::sleep(Duration::from_millis(100));
            code = std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.ends_with(".cwasm") && l.contains(" r-xp "))
                .map(str::to_string)
                .collect();
        }
        assert!(
            !code.is_empty()
                && code
                    .iter()
                    .all(|l| l.contains("/view/module-ondemand") && l.contains(tier)),
            "{round}: the guest runs its machine code from its cache entry ({tier}), mapped \
             through the read-only view: {code:#?}"
        );
        if round == "first start" {
            assert!(
                code.iter().all(|l| l.contains("-winch-")),
                "{round}: Winch code: {code:#?}"
            );
        } else {
            assert!(
                code.iter().all(|l| !l.contains("-winch-")),
                "{round}: Cranelift code: {code:#?}"
            );
        }
        // The only host file the guest holds is that entry, read-only, on a read-only mount:
        // not even host root can write it through the guest's descriptor.
        let held = host_rooted_fds(pid);
        let (artefact, others): (Vec<_>, Vec<_>) = held
            .iter()
            .partition(|(_, f)| f.link.contains("/view/") && f.link.ends_with(".cwasm"));
        assert!(
            others.is_empty(),
            "{round}: the guest holds host filesystem descriptors: {others:#?}"
        );
        let [(n, facts)] = &artefact[..] else {
            panic!("{round}: one cache entry held: {held:#?}");
        };
        assert_eq!(facts.flags & 0o3, 0, "{round}: opened read-only: {facts:?}");
        let through = format!("/proc/{pid}/fd/{n}");
        let mut head = [0u8; 4];
        std::fs::File::open(&through)
            .and_then(|mut f| f.read_exact(&mut head))
            .expect("readable");
        assert_eq!(&head, b"\x7fELF");
        for (what, open) in [
            ("write", std::fs::OpenOptions::new().write(true).clone()),
            ("append", std::fs::OpenOptions::new().append(true).clone()),
        ] {
            let e = open.open(&through).expect_err(what);
            assert_eq!(
                e.raw_os_error(),
                Some(rustix::io::Errno::ROFS.raw_os_error()),
                "{round}: reopening the guest's entry to {what}: {e}"
            );
        }
        let e = std::fs::set_permissions(&through, std::fs::Permissions::from_mode(0o666))
            .expect_err("chmod");
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::ROFS.raw_os_error()),
            "{round}: {e}"
        );
        ctd.ctr(&["tasks", "kill", &id]).ok();
        let status = wait_child(&mut child, Duration::from_secs(10)).expect("stopped");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert_eq!(status.code(), Some(128 + 15), "{round}: ctr run: {err}");
    }
}

#[test]
fn a_module_winch_refuses_runs_on_its_first_start_from_cranelift_code() {
    skip_unless!(missing_prerequisites());
    let ctd = Containerd::builder()
        .shim(SHIM)
        .winch_first_starts()
        .start();
    let dir = tempfile::tempdir().expect("tmp");
    let wat = dir.path().join("tail.wat");
    // Tail calls (Winch refuses them): a million of them, then exit 3 through WASI.
    std::fs::write(
        &wat,
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $loop (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0))
      (then (i32.const 3))
      (else (return_call $loop (i32.sub (local.get 0) (i32.const 1))))))
  (func (export "_start") (call $exit (call $loop (i32.const 1000000)))))"#,
    )
    .expect("write");
    let root = wasmkube_test_harness::containerd::rootfs_with(&[("tail.wat", &wat)]);
    let out = ctd.run(&CtrRun::rootfs(
        unique_id("tail"),
        root.path(),
        &["/tail.wat"],
    ));
    assert_eq!(out.code, Some(3), "{out:#?}");
    let entries = ctd.cache_entries();
    assert!(
        entries.len() == 1 && !entries[0].to_string_lossy().contains("winch"),
        "compiled once, by Cranelift, and no tier-up needed: {entries:?}"
    );
}

#[test]
fn no_guest_broker_or_worker_holds_the_shims_containerd_socket() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let dir = tempfile::tempdir().expect("tmp");
    let wasm = dir.path().join("big.wasm");
    std::fs::write(&wasm, big_module(20 << 20, false)).expect("write");
    let root = wasmkube_test_harness::containerd::rootfs_with(&[("big.wasm", &wasm)]);
    let id = unique_id("sockets");
    let mut child = ctd.spawn_run(&CtrRun::rootfs(&id, root.path(), &["/big.wasm"]));
    ctd.wait_task_running(&id, Duration::from_secs(30))
        .expect("running");
    let guest = ctd.task_pid(&id);
    // The shim daemon serving this containerd, its broker, and the worker compiling the module
    // (20 MB: seconds of work, so it is there to be looked at).
    let mut seen = None;
    let start = Instant::now();
    while seen.is_none() && start.elapsed() < Duration::from_secs(120) {
        seen = shim_roles(&ctd.address(), &id).and_then(|r| Some((r.daemon, r.broker?, r.worker?)));
        if seen.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (daemon, broker, worker) = seen.expect("the shim daemon, its broker and a worker");
    // Read while the worker still runs (the cache still empty).
    let in_worker = socket_inodes(worker);
    let in_broker = socket_inodes(broker);
    let in_guest = socket_inodes(guest);
    let still_compiling = ctd.cache_entries().is_empty();
    let listening = listening_unix_sockets();
    let daemon_listeners: Vec<String> = socket_inodes(daemon)
        .into_iter()
        .filter(|i| listening.contains(i))
        .collect();
    assert!(
        !daemon_listeners.is_empty(),
        "the shim daemon listens on containerd's TTRPC socket (else this proves nothing)"
    );
    assert!(still_compiling, "the worker was looked at while it worked");
    for (who, held) in [
        ("worker", &in_worker),
        ("broker", &in_broker),
        ("guest", &in_guest),
    ] {
        let leaked: Vec<_> = held
            .iter()
            .filter(|i| daemon_listeners.contains(i))
            .collect();
        assert!(
            leaked.is_empty(),
            "the {who} holds the shim's containerd listener socket:[{leaked:?}] (its sockets: \
             {held:?})"
        );
    }
    let task = rustix::process::Pid::from_raw(i32::try_from(guest).expect("pid")).expect("pid");
    rustix::process::kill_process(task, rustix::process::Signal::TERM).expect("kill");
    let status = wait_child(&mut child, Duration::from_secs(120)).expect("stopped");
    assert_eq!(status.code(), Some(128 + 15));
}

/// Whether `pid` has exited (gone, or a zombie not yet reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[test]
fn sigterm_while_a_20_mb_module_compiles_stops_the_container_promptly() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let dir = tempfile::tempdir().expect("tmp");
    let wasm = dir.path().join("big.wasm");
    std::fs::write(&wasm, big_module(20 << 20, false)).expect("write");
    assert!(std::fs::metadata(&wasm).expect("stat").len() >= 20 << 20);
    let root = wasmkube_test_harness::containerd::rootfs_with(&[("big.wasm", &wasm)]);

    let id = unique_id("bigstop");
    let mut child = ctd.spawn_run(&CtrRun::rootfs(&id, root.path(), &["/big.wasm"]));
    ctd.wait_task_running(&id, Duration::from_secs(30))
        .expect("running");
    let pid = ctd.task_pid(&id);
    // The worker compiling the module for it.
    let started = Instant::now();
    let worker = loop {
        if let Some(w) = shim_roles(&ctd.address(), &id).and_then(|r| r.worker) {
            break w;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no compile worker for the task"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        ctd.cache_entries().is_empty(),
        "still compiling when the stop comes (else this test proves nothing)"
    );
    // The signal containerd's kill sends, straight to the task's process: `ctr tasks kill` is a
    // process start that took seconds on a loaded CI machine, time in which the compile ended.
    let task = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
    rustix::process::kill_process(task, rustix::process::Signal::TERM).expect("kill");
    // Prompt = the process is gone while the compile still runs (the cache is still empty).
    // No wall-clock bound (ctr's teardown alone took 19 s at a load of 9 on 2 cores); a hang
    // is caught by the limit.
    let asked = Instant::now();
    let exited_before_the_compile_ended = loop {
        if process_gone(pid) {
            break ctd.cache_entries().is_empty();
        }
        assert!(
            asked.elapsed() < Duration::from_secs(120),
            "the task did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = asked.elapsed();
    println!("the container process was gone {took:?} after SIGTERM");
    assert!(
        exited_before_the_compile_ended,
        "the stop waited for the compile to finish (stopped after {took:?})"
    );
    let status = wait_child(&mut child, Duration::from_secs(120)).expect("ctr run returned");
    if status.code() != Some(128 + 15) {
        let mut said = String::new();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut pipe = pipe;
            let _ = pipe.read_to_string(&mut said);
        }
        panic!(
            "exit code of a SIGTERM stop: {:?}, not 143; ctr and the container said:\n{said}\n\
             containerd:\n{}",
            status.code(),
            ctd.log_tail()
        );
    }
    // Its worker saw the hang-up and stopped compiling for nobody.
    let asked = Instant::now();
    while !process_gone(worker) {
        assert!(
            asked.elapsed() < Duration::from_secs(60),
            "the worker {worker} still runs after its container stopped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        ctd.cache_entries().is_empty(),
        "the worker stopped before it finished the compile"
    );

    // The stop left nothing that blocks the module: the next start compiles it again and runs
    // it to the end.
    let out = ctd
        .run(&CtrRun::rootfs(
            unique_id("bigwarm"),
            root.path(),
            &["/big.wasm"],
        ))
        .ok();
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(ctd.cache_entries().len(), 1, "one entry for the module");
}

#[test]
fn a_planted_cache_entry_is_refused_and_rebuilt() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = wasmkube_test_harness::containerd::rootfs_with(&[
        ("hello.wasm", &guest("hello")),
        ("trap.wasm", &guest("trap")),
    ]);
    ctd.run(&CtrRun::rootfs(
        unique_id("hello"),
        root.path(),
        &["/hello.wasm"],
    ))
    .ok();
    let hello_entry = ctd.cache_entries().pop().expect("hello cached");
    let out = ctd.run(&CtrRun::rootfs(
        unique_id("trap"),
        root.path(),
        &["/trap.wasm"],
    ));
    assert_eq!(out.code, Some(134), "{out:#?}");
    let trap_entry = ctd
        .cache_entries()
        .into_iter()
        .find(|e| *e != hello_entry)
        .expect("trap cached");
    // Genuine compiled code (the trap guest's), planted under the hello module's name with a
    // checksum anyone can compute, as a tenant that could write the directory would.
    let trap_entry = std::fs::read(&trap_entry).expect("read");
    let trap_code = trap_entry[..trap_entry.len() - 36].to_vec();
    let mut planted = b"WKC1".to_vec();
    planted.extend_from_slice(&Sha256::digest(&trap_code));
    planted.extend_from_slice(&trap_code);
    std::fs::write(&hello_entry, &planted).expect("plant");
    std::fs::set_permissions(&hello_entry, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let out = ctd
        .run(&CtrRun::rootfs(
            unique_id("hello"),
            root.path(),
            &["/hello.wasm"],
        ))
        .ok();
    assert!(
        out.stdout.starts_with("hello from wasm"),
        "the planted code must not run: {out:#?}"
    );
    let rebuilt = std::fs::read(&hello_entry).expect("rebuilt");
    assert_ne!(rebuilt, planted, "the planted entry was replaced");
    assert!(rebuilt.starts_with(b"\x7fELF"), "the artefact at offset 0");
    assert_eq!(&rebuilt[rebuilt.len() - 36..rebuilt.len() - 32], b"WKC3");
}

#[test]
fn a_cache_directory_others_can_read_is_refused_with_a_message() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let cache = ctd.cache_dir();
    std::fs::create_dir_all(&cache).expect("mkdir");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = wasmkube_test_harness::containerd::rootfs_with(&[("hello.wasm", &guest("hello"))]);
    let out = ctd
        .run(&CtrRun::rootfs(
            unique_id("loose"),
            root.path(),
            &["/hello.wasm"],
        ))
        .ok();
    assert!(out.stdout.starts_with("hello from wasm"), "{out:#?}");
    assert!(
        out.stderr.contains("compiled-module cache off")
            && out.stderr.contains(&cache.display().to_string())
            && out.stderr.contains("has mode 0755"),
        "{out:#?}"
    );
    assert!(
        ctd.cache_entries().is_empty(),
        "nothing written into a refused cache"
    );
    assert_eq!(
        std::fs::metadata(&cache)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o755,
        "left as it was"
    );
}

/// The capabilities containerd and Docker give a container by default (no `CAP_SYS_PTRACE`).
const DEFAULT_CONTAINER_CAPS: &str = "+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,+setuid,\
                                      +setpcap,+net_bind_service,+net_raw,+sys_chroot,+mknod,\
                                      +audit_write,+setfcap";

/// What the root of a hostPID pod can open of each process in `pids`: a probe in the host's PID
/// namespace as uid 0 with only a container's default capabilities (`setpriv` drops the rest
/// from its bounding set, so its exec keeps no more). `(pid, what) -> opened`.
fn probe_as_a_host_pid_pods_root(pids: &[u32]) -> std::collections::HashMap<(u32, String), bool> {
    let script = r#"
for pid in "$@"; do
  for p in mem environ; do
    if ( exec 3</proc/$pid/$p ) 2>/dev/null; then echo "$pid $p open"; else echo "$pid $p denied"; fi
  done
  if /bin/busybox ls /proc/$pid/root/ >/dev/null 2>&1; then echo "$pid root open"; else echo "$pid root denied"; fi
  # The numbers in fd/ are listable with CAP_DAC_OVERRIDE; following one is the access.
  if /bin/busybox readlink /proc/$pid/fd/0 >/dev/null 2>&1; then echo "$pid fd open"; else echo "$pid fd denied"; fi
done
"#;
    let out = std::process::Command::new("/usr/bin/setpriv")
        .arg(format!("--bounding-set=-all,{DEFAULT_CONTAINER_CAPS}"))
        .args([
            "--inh-caps=-all",
            "/bin/busybox",
            "sh",
            "-c",
            script,
            "probe",
        ])
        .args(pids.iter().map(u32::to_string))
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "probe: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (pid, what, verdict) = (w.next()?.parse().ok()?, w.next()?, w.next()?);
            Some(((pid, what.to_string()), verdict == "open"))
        })
        .collect()
}

#[test]
fn the_compiler_holds_nothing_and_a_host_pid_root_cannot_look_into_it_or_its_worker() {
    skip_unless!(missing_prerequisites());
    skip_unless!((!std::path::Path::new("/bin/busybox").exists())
        .then(|| "static busybox (apt-get install -y busybox-static)".to_string()));
    skip_unless!((!std::path::Path::new("/usr/bin/setpriv").exists())
        .then(|| "setpriv (util-linux)".to_string()));
    let ctd = containerd();
    // The control: what the worker used to be, uid 0 without capabilities but dumpable. A
    // hostPID root can walk its root and descriptors (else the probe proves nothing).
    let mut control = std::process::Command::new("/usr/bin/setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "sleep", "300"])
        .spawn()
        .expect("setpriv");
    let dir = tempfile::tempdir().expect("tmp");
    let wasm = dir.path().join("big.wasm");
    std::fs::write(&wasm, big_module(40 << 20, false)).expect("write");
    let root = wasmkube_test_harness::containerd::rootfs_with(&[("big.wasm", &wasm)]);
    let id = unique_id("confined");
    let mut child = ctd.spawn_run(&CtrRun::rootfs(&id, root.path(), &["/big.wasm"]));
    let start = Instant::now();
    let (worker, compiler) = loop {
        if let Some(seen) =
            shim_roles(&ctd.address(), &id).and_then(|r| Some((r.worker?, r.compiler?)))
        {
            break seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no compiler for the task"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // Once it has read the module, it compiles under its seccomp filter.
    let reading = Instant::now();
    while status(compiler).get("Seccomp").map(String::as_str) != Some("2") {
        assert!(
            reading.elapsed() < Duration::from_secs(60),
            "the compiler never loaded its seccomp filter: {:?}",
            status(compiler)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let opened = probe_as_a_host_pid_pods_root(&[worker, compiler, control.id()]);
    // Looked at while it compiled (the cache still empty, the process still there).
    let facts = status(compiler);
    let still_compiling = !facts.is_empty() && ctd.cache_entries().is_empty();
    assert!(still_compiling, "the compiler was probed while it worked");
    let uid = DEFAULT_COMPILER_ID.to_string();
    let id4 = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(facts.get("Uid"), Some(&id4), "{facts:?}");
    assert_eq!(facts.get("Gid"), Some(&id4), "{facts:?}");
    assert_eq!(
        facts.get("Groups").map(String::as_str),
        Some(""),
        "{facts:?}"
    );
    for caps in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            facts.get(caps).map(String::as_str),
            Some("0000000000000000"),
            "{caps}: {facts:?}"
        );
    }
    assert_eq!(facts.get("NoNewPrivs").map(String::as_str), Some("1"));
    assert_eq!(
        facts.get("Seccomp").map(String::as_str),
        Some("2"),
        "filtered"
    );
    let chroot = std::fs::read_link(format!("/proc/{compiler}/root")).expect("root");
    assert_eq!(chroot, std::path::Path::new("/run/wasmkube/empty"));
    let cache = ctd.cache_dir();
    for fd in std::fs::read_dir(format!("/proc/{compiler}/fd"))
        .expect("fds")
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        let meta = std::fs::metadata(fd.path());
        assert!(
            !target.starts_with(&cache) && !meta.is_ok_and(|m| m.is_dir()),
            "the compiler holds {} -> {}",
            fd.path().display(),
            target.display()
        );
    }
    // The worker (the cache's owner, uid 0) holds no capability either.
    assert_eq!(
        status(worker).get("CapEff").map(String::as_str),
        Some("0000000000000000")
    );
    for (pid, who) in [(compiler, "compiler"), (worker, "worker")] {
        for what in ["mem", "environ", "root", "fd"] {
            assert_eq!(
                opened.get(&(pid, what.to_string())),
                Some(&false),
                "a hostPID root opened the {who}'s /proc/{pid}/{what}: {opened:?}"
            );
        }
    }
    let control_pid = control.id();
    for what in ["root", "fd"] {
        assert_eq!(
            opened.get(&(control_pid, what.to_string())),
            Some(&true),
            "the probe cannot even open a dumpable capability-less root process's {what}: \
             {opened:?}"
        );
    }
    let _ = control.kill();
    let _ = control.wait();
    let task = rustix::process::Pid::from_raw(i32::try_from(ctd.task_pid(&id)).expect("pid"))
        .expect("pid");
    rustix::process::kill_process(task, rustix::process::Signal::TERM).expect("kill");
    wait_child(&mut child, Duration::from_secs(120)).expect("stopped");
    let asked = Instant::now();
    while !process_gone(compiler) {
        assert!(
            asked.elapsed() < Duration::from_secs(60),
            "the compiler {compiler} outlived its container"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_module_that_fails_to_compile_is_compiled_once_for_ten_restarts() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let dir = tempfile::tempdir().expect("tmp");
    // Valid functions first, the type error in the last one: it fails late.
    let mut wat = String::from("(module\n");
    for i in 0..2000 {
        wat.push_str(&format!(
            "  (func (param i32) (result i32) local.get 0 i32.const {i} i32.add)\n"
        ));
    }
    wat.push_str("  (func (result i32) i64.const 0)\n  (func (export \"_start\")))\n");
    let path = dir.path().join("late.wat");
    std::fs::write(&path, wat).expect("write");
    let root = wasmkube_test_harness::containerd::rootfs_with(&[("late.wat", &path)]);
    let mut outputs = Vec::new();
    for _ in 0..10 {
        let out = ctd.run(&CtrRun::rootfs(
            unique_id("late"),
            root.path(),
            &["/late.wat"],
        ));
        assert_eq!(out.code, Some(126), "{out:#?}");
        outputs.push(out.stderr);
    }
    assert!(
        outputs[0].contains("type mismatch") && !outputs[0].contains("failed to compile on"),
        "the first start compiles and names the error: {}",
        outputs[0]
    );
    for (i, err) in outputs.iter().enumerate().skip(1) {
        assert!(
            err.contains("type mismatch")
                && err.contains("this module failed to compile on this node"),
            "restart {i} compiled again instead of recalling the failure: {err}"
        );
    }
    let remembered: Vec<_> = std::fs::read_dir(ctd.cache_dir())
        .expect("cache")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("module-failed-"))
        .collect();
    assert_eq!(remembered.len(), 1, "{remembered:?}");
}
