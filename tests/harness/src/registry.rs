//! A real OCI distribution registry for tests: Debian's `docker-registry` (distribution v2)
//! serving on a loopback port from a temp dir, anonymous, behind HTTP basic auth (an
//! `htpasswd -B` file, as the registry's docs configure it), or behind the token flow (`auth:
//! token:` with a [`TokenServer`] as its realm). Stopped and removed on drop.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    free_port,
    token_server::{TokenServer, ISSUER, SERVICE},
    which,
};

/// What [`Registry::start`] needs, or `None` when the machine has it.
pub fn missing_registry() -> Option<String> {
    let missing: Vec<String> = [
        ("docker-registry", "docker-registry"),
        ("htpasswd", "apache2-utils"),
    ]
    .into_iter()
    .filter(|(tool, _)| which(tool).is_none())
    .map(|(tool, package)| format!("`{tool}` on PATH (apt-get install -y {package})"))
    .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
    token_server: Option<TokenServer>,
}

enum Auth<'a> {
    Anonymous,
    Basic(&'a str, &'a str),
    Token(&'a str, &'a str),
}

impl Registry {
    /// Anonymous pushes and pulls.
    pub fn start() -> Registry {
        Self::start_with(Auth::Anonymous)
    }

    /// Every request needs `user`'s basic credentials.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::start_with(Auth::Basic(user, password))
    }

    /// Every request needs a bearer token from a [`TokenServer`] (its realm), which grants
    /// `user` (with `password`) pull and push and anonymous requests nothing.
    pub fn start_with_token(user: &str, password: &str) -> Registry {
        Self::start_with(Auth::Token(user, password))
    }

    fn start_with(auth: Auth<'_>) -> Registry {
        let dir = tempfile::tempdir().expect("registry dir");
        // The token server takes its port first, so the registry's free port cannot be it.
        let token = match auth {
            Auth::Token(user, password) => Some(TokenServer::start(user, password)),
            _ => None,
        };
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: wasmkube-test\n",
            dir.path().join("data").display()
        );
        let mut token_server = None;
        match auth {
            Auth::Anonymous => {}
            Auth::Basic(user, password) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd");
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("write htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: wasmkube-test\n    path: {}\n",
                    file.display()
                ));
            }
            Auth::Token(..) => {
                let server = token.expect("started above");
                let bundle = dir.path().join("token-root.pem");
                std::fs::write(&bundle, server.root_cert_pem()).expect("write rootcertbundle");
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    server.realm,
                    bundle.display()
                ));
                token_server = Some(server);
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry {
            addr,
            child,
            dir,
            token_server,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Its own answer, not whatever else took the port in a race.
        while !is_registry(&registry.addr) {
            let exited = registry.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "docker-registry did not serve on {} within 20 s (exit: {exited:?}):\n{}",
                registry.addr,
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// The registry's own log (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The token server of [`Registry::start_with_token`].
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// Where the registry keeps its blobs.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// Whether a distribution registry answers `GET /v2/` on `addr` (its API version header).
fn is_registry(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn
        .write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = conn.take(16 * 1024).read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .to_ascii_lowercase()
        .contains("docker-distribution-api-version")
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
