//! The operator's listener: `[::]` by default, which on Linux also accepts IPv4 (dual-stack,
//! unless `net.ipv6.bindv6only=1`), and falls back to `0.0.0.0` on a host or network namespace
//! without IPv6.

use std::{
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr},
};

use tokio::net::TcpListener;
use tracing::warn;

/// `EAFNOSUPPORT` on Linux: the kernel has no IPv6 (`ipv6.disable=1`). std has no `ErrorKind`
/// for it.
const EAFNOSUPPORT: i32 = 97;

/// The IPv4 wildcard to use instead of `addr` when binding `addr` failed with `err` because
/// there is no IPv6: only for the IPv6 wildcard, and only for "no such address family" or
/// "address not available" (a port in use is a real error and stays one).
pub fn ipv4_fallback(addr: SocketAddr, err: &io::Error) -> Option<SocketAddr> {
    let v6_wildcard = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    let no_ipv6 = err.kind() == io::ErrorKind::AddrNotAvailable
        || (cfg!(target_os = "linux") && err.raw_os_error() == Some(EAFNOSUPPORT));
    (v6_wildcard && no_ipv6).then(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())))
}

/// Binds `addr` with `bind`, falling back to the IPv4 wildcard as [`ipv4_fallback`] says (with
/// a log line). `bind` is injectable so tests can play a host without IPv6.
pub async fn bind_with<L, F, Fut>(addr: SocketAddr, mut bind: F) -> io::Result<L>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<L>>,
{
    match bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(err) => match ipv4_fallback(addr, &err) {
            Some(v4) => {
                warn!(%addr, fallback = %v4, error = %err, "no IPv6 here; listening on IPv4 only");
                bind(v4).await
            }
            None => Err(err),
        },
    }
}

/// A TCP listener on `addr` (see [`bind_with`]).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_with(addr, TcpListener::bind).await
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv6Addr,
        sync::{Arc, Mutex},
    };

    use tokio::{io::AsyncWriteExt, net::TcpStream};

    use super::*;

    const ANY6: &str = "[::]:8080";

    fn err(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn falls_back_only_from_the_v6_wildcard_and_only_without_ipv6() {
        let any6: SocketAddr = ANY6.parse().expect("addr");
        let v4: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(ipv4_fallback(any6, &err(EAFNOSUPPORT)), Some(v4));
        assert_eq!(ipv4_fallback(any6, &err(99)), Some(v4), "EADDRNOTAVAIL");
        assert_eq!(ipv4_fallback(any6, &err(98)), None, "EADDRINUSE is real");
        assert_eq!(ipv4_fallback(any6, &err(13)), None, "EACCES is real");
        let loopback6: SocketAddr = "[::1]:8080".parse().expect("addr");
        assert_eq!(
            ipv4_fallback(loopback6, &err(EAFNOSUPPORT)),
            None,
            "a specific address was asked for"
        );
        assert_eq!(ipv4_fallback(v4, &err(99)), None);
    }

    /// Plays a host without IPv6: binding an IPv6 address fails with `code`.
    async fn without_ipv6(code: i32) -> (io::Result<TcpListener>, Vec<SocketAddr>) {
        let tried = Arc::new(Mutex::new(Vec::new()));
        let log = tried.clone();
        let result = bind_with("[::]:0".parse().expect("addr"), move |a: SocketAddr| {
            log.lock().expect("lock").push(a);
            async move {
                if a.is_ipv6() {
                    Err(err(code))
                } else {
                    TcpListener::bind(a).await
                }
            }
        })
        .await;
        let tried = tried.lock().expect("lock").clone();
        (result, tried)
    }

    #[tokio::test]
    async fn a_host_without_ipv6_gets_an_ipv4_listener() {
        for code in [EAFNOSUPPORT, 99] {
            let (listener, tried) = without_ipv6(code).await;
            let listener = listener.expect("fallback bound");
            assert_eq!(
                tried,
                [
                    "[::]:0".parse::<SocketAddr>().expect("addr"),
                    "0.0.0.0:0".parse().expect("addr")
                ]
            );
            let port = listener.local_addr().expect("addr").port();
            let mut c = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("IPv4 reaches the fallback");
            c.write_all(b"x").await.expect("write");
        }
        let (listener, tried) = without_ipv6(98).await;
        assert_eq!(
            listener
                .expect_err("no fallback for EADDRINUSE")
                .raw_os_error(),
            Some(98)
        );
        assert_eq!(tried.len(), 1);
    }

    #[tokio::test]
    async fn the_v6_wildcard_accepts_ipv4_and_ipv6() {
        let listener = bind("[::]:0".parse().expect("addr")).await.expect("bind");
        let local = listener.local_addr().expect("addr");
        let port = local.port();
        let accept = tokio::spawn(async move {
            let mut peers = Vec::new();
            for _ in 0..2 {
                let (_, peer) = listener.accept().await.expect("accept");
                peers.push(peer);
            }
            peers
        });
        TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .expect("IPv4 client on the [::] listener");
        assert!(local.is_ipv6(), "this host has IPv6: no fallback expected");
        TcpStream::connect((Ipv6Addr::LOCALHOST, port))
            .await
            .expect("IPv6 client");
        let peers = accept.await.expect("accepted");
        // The IPv4 client arrives as an IPv4-mapped IPv6 address.
        assert_eq!(
            peers[0].ip().to_canonical(),
            std::net::IpAddr::from(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(peers[1].ip(), std::net::IpAddr::from(Ipv6Addr::LOCALHOST));
    }
}
