//! A Docker registry token server for tests (the token flow of the distribution spec): a
//! registry configured with `auth: token:` answers `401` with
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…`; the client asks the realm
//! (`GET /token?service=…&scope=repository:NAME:pull,push`, HTTP basic credentials or none) and
//! gets `{"token": JWT, "access_token": JWT, "expires_in": 300}`; the registry verifies the JWT.
//!
//! The JWT is ES256 (ring's fixed-size `r||s` signature is JWS's), its header carries the
//! signing key's self-signed certificate in `x5c`, and the same certificate is the registry's
//! `rootcertbundle` ([`TokenServer::root_cert_pem`]), which is how distribution 2.8 trusts it.
//! The right user and password get every action they ask for; anonymous requests get a token
//! with no access; a wrong password gets `401`. Plain HTTP on 127.0.0.1, one connection at a
//! time, `Connection: close`, 16 KiB request heads and 5 s socket timeouts. Every request is
//! recorded ([`TokenServer::requests`]). Stopped on drop.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine as _,
};
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};

/// The `iss` of every token, the registry's `issuer`.
pub const ISSUER: &str = "wasmkube-test-token-server";
/// The `aud` of every token, the registry's `service`.
pub const SERVICE: &str = "wasmkube-test-registry";
/// Seconds a token lives.
const EXPIRES_IN: u64 = 300;
const MAX_HEAD: usize = 16 << 10;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One request the token server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `service` query parameter.
    pub service: Option<String>,
    /// Every `scope` asked for (`repository:NAME:ACTIONS`), in order.
    pub scopes: Vec<String>,
    /// The user of the request's basic credentials, right or wrong; `None` when anonymous.
    pub user: Option<String>,
    /// The status answered: 200 with a token, 401 for wrong credentials, 4xx for a bad request.
    pub status: u16,
    /// The access granted, as `repository:NAME:ACTIONS` (empty for anonymous requests).
    pub granted: Vec<String>,
}

/// A running token server.
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    pub realm: String,
    cert_pem: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

struct Issuer {
    user: String,
    password: String,
    key: EcdsaKeyPair,
    /// Base64 (standard, padded) DER of the key's self-signed certificate, for `x5c`.
    x5c: String,
    rng: SystemRandom,
    serial: AtomicU64,
}

impl TokenServer {
    /// Starts a server that grants `user` (with `password`) whatever it asks for.
    pub fn start(user: &str, password: &str) -> TokenServer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate a P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("load the P-256 key");
        let cert_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).expect("rcgen key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ISSUER);
        let cert = params
            .self_signed(&cert_key)
            .expect("self-signed certificate");

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let addr = listener.local_addr().expect("token server address");
        let issuer = Issuer {
            user: user.to_owned(),
            password: password.to_owned(),
            key,
            x5c: STANDARD.encode(cert.der()),
            rng,
            serial: AtomicU64::new(0),
        };
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        // A client that misbehaves costs its own request only.
                        let _ = serve(stream, &issuer, &requests);
                    }
                }
            })
        };
        TokenServer {
            realm: format!("http://{addr}/token"),
            cert_pem: cert.pem(),
            requests,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    /// The PEM certificate that signs the tokens: the registry's `rootcertbundle`.
    pub fn root_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request and answers it.
fn serve(
    mut stream: TcpStream,
    issuer: &Issuer,
    requests: &Mutex<Vec<TokenRequest>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return respond(&mut stream, 431, &[], &error_body("request head too large"));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (
        request_line.next().unwrap_or_default(),
        request_line.next().unwrap_or_default(),
    );
    let authorization = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_owned());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut record = TokenRequest {
        service: None,
        scopes: Vec::new(),
        user: None,
        status: 0,
        granted: Vec::new(),
    };
    for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        match name {
            "service" => record.service = Some(percent_decode(value)),
            // A scope parameter may hold several, space-separated.
            "scope" => record
                .scopes
                .extend(percent_decode(value).split(' ').map(str::to_owned)),
            _ => {}
        }
    }
    let credentials = authorization.as_deref().map(basic_credentials);
    record.user = credentials
        .as_ref()
        .and_then(|c| c.as_ref().map(|(u, _)| u.clone()));
    let (status, body) = if method != "GET" || path != "/token" {
        (404, error_body("not found"))
    } else {
        match credentials {
            Some(Some((user, password))) if user == issuer.user && password == issuer.password => {
                record.granted = record.scopes.iter().filter_map(|s| grant(s)).collect();
                (200, issuer.token(&user, &record.granted))
            }
            None => (200, issuer.token("", &[])),
            Some(_) => (401, error_body("invalid username or password")),
        }
    };
    record.status = status;
    if let Ok(mut all) = requests.lock() {
        all.push(record);
    }
    let challenge: &[(&str, &str)] = if status == 401 {
        &[("WWW-Authenticate", "Basic realm=\"wasmkube-test-token\"")]
    } else {
        &[]
    };
    respond(&mut stream, status, challenge, &body)
}

/// `user:password` of a `Basic` authorization; `None` for any other or a malformed one.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The pull and push actions of a `repository:NAME:ACTIONS` scope, as granted.
fn grant(scope: &str) -> Option<String> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|a| matches!(*a, "pull" | "push"))
        .collect();
    (!name.is_empty() && !actions.is_empty())
        .then(|| format!("repository:{name}:{}", actions.join(",")))
}

impl Issuer {
    /// The token response for `subject` with `granted` access (`repository:NAME:ACTIONS`).
    fn token(&self, subject: &str, granted: &[String]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let access: Vec<serde_json::Value> = granted
            .iter()
            .filter_map(|g| {
                let (name, actions) = g.strip_prefix("repository:")?.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": "repository",
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + EXPIRES_IN,
            "nbf": now.saturating_sub(1),
            "iat": now,
            "jti": format!("{}-{}", std::process::id(), self.serial.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("ES256 signature");
        let jwt = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        );
        serde_json::json!({
            "token": jwt,
            "access_token": jwt,
            "expires_in": EXPIRES_IN,
            "issued_at": now,
        })
        .to_string()
    }
}

fn error_body(message: &str) -> String {
    serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]}).to_string()
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(body);
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// `%XX` escapes and `+` as a space, as in a query string.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_scopes_and_credentials_are_read() {
        assert_eq!(
            percent_decode("repository%3Aapps%2Fhello%3Apull%2Cpush"),
            "repository:apps/hello:pull,push"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(
            grant("repository:apps/hello:pull,push,delete").as_deref(),
            Some("repository:apps/hello:pull,push")
        );
        assert_eq!(grant("registry:catalog:*"), None);
        let basic = format!("Basic {}", STANDARD.encode("alice:pw:with:colons"));
        assert_eq!(
            basic_credentials(&basic),
            Some(("alice".into(), "pw:with:colons".into()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
    }
}
