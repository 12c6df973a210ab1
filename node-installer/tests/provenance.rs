//! The corpus says what it is: every file in `tests/configs` is listed in its `PROVENANCE.md`
//! as real, adapted or hand-written, and the real ones are regenerated and compared where their
//! containerd is on this machine.
use std::path::{Path, PathBuf};
use std::process::Command;

use wasmkube_test_harness::{skip_unless, which};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs")
}

/// `(file, kind, source)` rows of the PROVENANCE.md table.
fn rows() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(configs().join("PROVENANCE.md")).expect("PROVENANCE.md");
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 3, "malformed row: {l}");
            (
                cells[0].trim_matches('`').to_string(),
                cells[1].to_string(),
                cells[2].to_string(),
            )
        })
        .collect()
}

#[test]
fn every_corpus_file_is_listed_once_with_its_kind_and_source() {
    let mut files: Vec<String> = std::fs::read_dir(configs())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "PROVENANCE.md")
        .collect();
    files.sort();
    let rows = rows();
    let mut listed: Vec<String> = rows.iter().map(|(f, _, _)| f.clone()).collect();
    listed.sort();
    let mut unique = listed.clone();
    unique.dedup();
    assert_eq!(listed, unique, "a file is listed twice");
    assert_eq!(files, listed, "tests/configs and PROVENANCE.md differ");
    for (file, kind, source) in &rows {
        assert!(
            ["real", "adapted", "hand-written"].contains(&kind.as_str()),
            "{file}: kind {kind:?}"
        );
        assert!(!source.is_empty(), "{file}: no source");
    }
}

/// `containerd config default` of `binary`, when it is there and reports `version`.
fn config_default(binary: &Path, version: &str) -> Option<Vec<u8>> {
    let v = Command::new(binary).arg("--version").output().ok()?;
    if !String::from_utf8_lossy(&v.stdout).contains(version) {
        return None;
    }
    let out = Command::new(binary)
        .args(["config", "default"])
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

#[test]
fn the_real_defaults_are_what_their_containerd_prints() {
    let debian = which("containerd");
    let c2 = wasmkube_test_harness::containerd::containerd2_bin_dir().map(|d| d.join("containerd"));
    let checks = [
        (debian, "1.6.20~ds1", "containerd-1.6-default.toml"),
        (c2, "2.4.2", "containerd-2.4-default.toml"),
    ];
    let mut missing = Vec::new();
    for (binary, version, file) in checks {
        let Some(now) = binary.as_deref().and_then(|b| config_default(b, version)) else {
            missing.push(format!("containerd {version} (for {file})"));
            continue;
        };
        let kept = std::fs::read(configs().join(file)).expect("corpus file");
        assert!(
            now == kept,
            "{file} is no longer what containerd {version} prints for `config default`"
        );
    }
    skip_unless!((!missing.is_empty()).then(|| missing.join(", ")));
}
