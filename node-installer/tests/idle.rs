//! `idle` is PID 1 of the installer pod's long-running container: it must exit 0 promptly on
//! SIGTERM, or every installer pod deletion waits out its grace period.
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn idle_exits_zero_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmkube-node-installer"))
        .arg("idle")
        .spawn()
        .expect("spawn installer idle");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "idle returned on its own"
    );
    let t = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "idle exited with {status}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "idle ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
