//! `wasmkube push` and `wasmkube pull` against a real registry (Debian's `docker-registry`,
//! distribution v2) on loopback: round trips of both layouts and of archives, deterministic
//! digests, basic auth from --password-stdin and from the Docker config file, and the registry
//! token flow (a `Bearer` challenge answered at a token server's realm).

use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use wasmkube_oci::inspect::read_archive;
use wasmkube_test_harness::{
    guests::guest,
    registry::{missing_registry, Registry},
    skip_unless, token_server,
};

const USER: &str = "alice";
const PASSWORD: &str = "pw-9f3c1e7d";

/// Runs `wasmkube` in `dir` with `stdin`, and `DOCKER_CONFIG` pointing at `dir/docker` (empty
/// unless a test writes a config there), so the user's own config never leaks in.
fn wasmkube(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmkube"))
        .args(args)
        .current_dir(dir)
        .env("DOCKER_CONFIG", dir.join("docker"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wasmkube");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait wasmkube")
}

fn ok(out: &Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stdout.into_owned()
}

fn failed(out: &Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {stdout}"
    );
    format!("{stdout}{stderr}")
}

/// The `sha256:…` after "manifest " in a push or pull line.
fn digest(line: &str) -> String {
    line.split("manifest ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no manifest digest in {line:?}"))
        .to_owned()
}

#[test]
fn artifact_round_trip_is_byte_identical_and_deterministic() {
    skip_unless!(missing_registry());
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let module = guest("http_hello");
    let original = fs::read(&module).expect("guest");
    let src = module.to_str().expect("utf8 path");
    let reference = format!("{}/apps/hello:v1", registry.addr);

    let first = ok(&wasmkube(dir.path(), &["push", src, &reference], ""));
    assert!(
        first.starts_with(&format!("pushed {reference} manifest sha256:")),
        "{first}"
    );
    assert!(first.contains("(2 of 2 blobs uploaded)"), "{first}");
    // Again, and under another tag: same manifest digest, nothing uploaded twice.
    let again = ok(&wasmkube(dir.path(), &["push", src, &reference], ""));
    let other = format!("{}/apps/hello:v2", registry.addr);
    let retagged = ok(&wasmkube(dir.path(), &["push", src, &other], ""));
    assert_eq!(digest(&first), digest(&again));
    assert_eq!(digest(&first), digest(&retagged));
    assert!(again.contains("(0 of 2 blobs uploaded)"), "{again}");

    let pulled = ok(&wasmkube(
        dir.path(),
        &["pull", &reference, "-o", "out.wasm"],
        "",
    ));
    assert_eq!(digest(&pulled), digest(&first), "{pulled}");
    assert!(pulled.contains("(wasm module,"), "{pulled}");
    assert_eq!(
        fs::read(dir.path().join("out.wasm")).expect("pulled"),
        original
    );
}

#[test]
fn image_layout_and_archives_round_trip() {
    skip_unless!(missing_registry());
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let module = guest("http_hello");
    let src = module.to_str().expect("utf8 path");
    let reference = format!("{}/apps/hello-image:v1", registry.addr);

    // `pack` writes the archive, `push --layout image` packs the same image in memory.
    ok(&wasmkube(
        dir.path(),
        &["pack", src, "--name", &reference, "-o", "packed.tar"],
        "",
    ));
    let pushed = ok(&wasmkube(
        dir.path(),
        &["push", src, &reference, "--layout", "image"],
        "",
    ));
    let packed = read_archive(&dir.path().join("packed.tar")).expect("packed archive");
    assert_eq!(digest(&pushed), packed.image.manifest_digest());

    // The archive itself, pushed elsewhere: the same digest.
    let copy = format!("{}/copies/hello-image:v1", registry.addr);
    let from_archive = ok(&wasmkube(dir.path(), &["push", "packed.tar", &copy], ""));
    assert_eq!(digest(&from_archive), digest(&pushed));

    // Pulled back: an archive, byte-identical to the one `pack` wrote.
    let pulled = ok(&wasmkube(
        dir.path(),
        &["pull", &reference, "-o", "pulled.tar"],
        "",
    ));
    assert!(pulled.contains("(image archive,"), "{pulled}");
    assert_eq!(
        fs::read(dir.path().join("pulled.tar")).expect("pulled"),
        fs::read(dir.path().join("packed.tar")).expect("packed")
    );
}

#[test]
fn missing_images_and_bad_sources_are_named() {
    skip_unless!(missing_registry());
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = format!("{}/apps/absent:v1", registry.addr);
    let err = failed(&wasmkube(
        dir.path(),
        &["pull", &reference, "-o", "x.wasm"],
        "",
    ));
    assert!(
        err.contains(&format!("{}: {reference} not found (404)", registry.addr)),
        "{err}"
    );
    assert!(!dir.path().join("x.wasm").exists());

    fs::write(dir.path().join("notes.txt"), "not an image").expect("write");
    let err = failed(&wasmkube(
        dir.path(),
        &["push", "notes.txt", &reference],
        "",
    ));
    assert!(
        err.contains("notes.txt is neither a .wasm file nor an image archive"),
        "{err}"
    );
}

#[test]
fn basic_auth_from_stdin_and_from_the_docker_config() {
    skip_unless!(missing_registry());
    let registry = Registry::start_with_auth(USER, PASSWORD);
    let dir = tempfile::tempdir().expect("tempdir");
    let module = guest("http_hello");
    let src = module.to_str().expect("utf8 path");
    let reference = format!("{}/private/hello:v1", registry.addr);

    // No credentials: 401, named.
    let err = failed(&wasmkube(dir.path(), &["push", src, &reference], ""));
    assert!(
        err.contains(&format!(
            "{}: push of {reference} refused: 401 Unauthorized",
            registry.addr
        )),
        "{err}"
    );
    // A wrong password: refused, and the password is nowhere in the output.
    let wrong = "wrong-pw-51d0";
    let err = failed(&wasmkube(
        dir.path(),
        &["push", src, &reference, "-u", USER, "--password-stdin"],
        &format!("{wrong}\n"),
    ));
    assert!(err.contains("401 Unauthorized"), "{err}");
    assert!(!err.contains(wrong), "the password leaked: {err}");
    // The right one.
    let pushed = ok(&wasmkube(
        dir.path(),
        &["push", src, &reference, "-u", USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    ));
    assert!(!pushed.contains(PASSWORD), "{pushed}");

    // Anonymous pull: refused; with the Docker config file's entry: pulled.
    let err = failed(&wasmkube(
        dir.path(),
        &["pull", &reference, "-o", "a.wasm"],
        "",
    ));
    assert!(err.contains("401 Unauthorized"), "{err}");
    let docker = dir.path().join("docker");
    fs::create_dir_all(&docker).expect("docker dir");
    let auth = STANDARD.encode(format!("{USER}:{PASSWORD}"));
    fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.addr),
    )
    .expect("config.json");
    let pulled = ok(&wasmkube(
        dir.path(),
        &["pull", &reference, "-o", "a.wasm"],
        "",
    ));
    assert_eq!(digest(&pulled), digest(&pushed));
    assert_eq!(
        fs::read(dir.path().join("a.wasm")).expect("pulled"),
        fs::read(&module).expect("guest")
    );
}

#[test]
fn token_flow_push_and_pull() {
    skip_unless!(missing_registry());
    let registry = Registry::start_with_token(USER, PASSWORD);
    let tokens = registry.token_server().expect("a token server");
    let dir = tempfile::tempdir().expect("tempdir");
    let module = guest("http_hello");
    let src = module.to_str().expect("utf8 path");
    let reference = format!("{}/private/hello:v1", registry.addr);
    let push_scope = "repository:private/hello:pull,push";
    let pull_scope = "repository:private/hello:pull";
    let refused = format!(
        "{}: push of {reference} refused: 401 Unauthorized",
        registry.addr
    );

    // Anonymous: the token server hands out a token with no access, the registry refuses it.
    let err = failed(&wasmkube(dir.path(), &["push", src, &reference], ""));
    assert!(err.contains(&refused), "{err}");
    let seen = tokens.requests();
    assert!(
        seen.iter().any(|r| r.user.is_none()
            && r.status == 200
            && r.granted.is_empty()
            && r.scopes == [push_scope]
            && r.service.as_deref() == Some(token_server::SERVICE)),
        "{seen:#?}"
    );

    // A wrong password: the token server refuses it, and it is nowhere in the output.
    let wrong = "wrong-pw-51d0";
    let err = failed(&wasmkube(
        dir.path(),
        &["push", src, &reference, "-u", USER, "--password-stdin"],
        &format!("{wrong}\n"),
    ));
    assert!(err.contains(&refused), "{err}");
    assert!(err.contains("invalid username or password"), "{err}");
    assert!(!err.contains(wrong), "the password leaked: {err}");
    assert!(
        tokens.requests().iter().any(|r| r.status == 401),
        "{:#?}",
        tokens.requests()
    );

    // The right one: a push token, and the module comes back byte-identical.
    let before = tokens.requests().len();
    let pushed = ok(&wasmkube(
        dir.path(),
        &["push", src, &reference, "-u", USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    ));
    assert!(pushed.contains("(2 of 2 blobs uploaded)"), "{pushed}");
    assert!(!pushed.contains(PASSWORD), "{pushed}");
    let seen = tokens.requests().split_off(before);
    assert!(
        seen.iter().any(|r| r.user.as_deref() == Some(USER)
            && r.status == 200
            && r.granted == [push_scope]),
        "{seen:#?}"
    );

    let before = tokens.requests().len();
    let out = wasmkube(
        dir.path(),
        &[
            "pull",
            &reference,
            "-o",
            "t.wasm",
            "-u",
            USER,
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    );
    let pulled = ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(PASSWORD));
    assert_eq!(digest(&pulled), digest(&pushed));
    assert_eq!(
        fs::read(dir.path().join("t.wasm")).expect("pulled"),
        fs::read(&module).expect("guest")
    );
    let seen = tokens.requests().split_off(before);
    assert!(
        seen.iter().any(|r| r.user.as_deref() == Some(USER)
            && r.status == 200
            && r.granted == [pull_scope]),
        "{seen:#?}"
    );

    // An anonymous pull of the private repository: refused.
    let err = failed(&wasmkube(
        dir.path(),
        &["pull", &reference, "-o", "anon.wasm"],
        "",
    ));
    assert!(
        err.contains(&format!(
            "{}: pull of {reference} refused: 401 Unauthorized",
            registry.addr
        )),
        "{err}"
    );
    assert!(!dir.path().join("anon.wasm").exists());
}

#[test]
fn a_blob_changed_in_the_registry_fails_the_pull_with_a_digest_mismatch() {
    skip_unless!(missing_registry());
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let module = guest("http_hello");
    let src = module.to_str().expect("utf8 path");
    let reference = format!("{}/apps/tampered:v1", registry.addr);
    ok(&wasmkube(dir.path(), &["push", src, &reference], ""));

    // The module's layer, as the registry stores it: one byte changed, same length.
    let original = fs::read(&module).expect("guest");
    let layer = walk(&registry.storage())
        .into_iter()
        .find(|p| p.ends_with("data") && fs::read(p).is_ok_and(|b| b == original))
        .expect("the layer's blob in the registry's storage");
    let mut bytes = original.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&layer, &bytes).expect("tamper");

    let err = failed(&wasmkube(
        dir.path(),
        &["pull", &reference, "-o", "t.wasm"],
        "",
    ));
    assert!(
        err.contains(&format!(
            "{}: digest mismatch for {reference}",
            registry.addr
        )),
        "{err}"
    );
    assert!(!dir.path().join("t.wasm").exists(), "nothing is written");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}
