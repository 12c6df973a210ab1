//! The wasi:http hooks of a guest: every outgoing request is checked against the grants, its
//! host resolved here and the connection made to a checked address ([`super::send`]).
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::{Policy, LOOKUP_TIMEOUT};

/// [`WasiHttpHooks`] enforcing a [`Policy`].
pub struct OutboundHooks {
    pub policy: Arc<Policy>,
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        drop(fut);
        let policy = self.policy.clone();
        Box::new(async move {
            let uri = request.uri();
            let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
            let tls = scheme == "https";
            let host = uri
                .host()
                .ok_or(Error::HttpRequestUriInvalid)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            policy
                .allows_request(&scheme, &host, port)
                .map_err(|_| Error::HttpRequestDenied)?;
            let addrs = resolve(&host, port).await?;
            let what = format!("{scheme}://{host}:{port}");
            let reachable = policy.reachable(&what, &addrs);
            if reachable.is_empty() {
                return Err(Error::HttpRequestDenied);
            }
            let (response, io) =
                super::send::send_to(request, options, &reachable, tls, &host).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The addresses of `host` (an address stands for itself), within [`LOOKUP_TIMEOUT`].
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err(Error::DnsTimeout),
        Ok(Err(e)) => Err(Error::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        }),
        Ok(Ok(found)) => {
            let found: Vec<_> = found.collect();
            if found.is_empty() {
                Err(Error::DestinationNotFound)
            } else {
                Ok(found)
            }
        }
    }
}
