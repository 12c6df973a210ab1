//! The wasi:http listener: `[::]` by default, dual-stack whatever `net.ipv6.bindv6only` says,
//! and `0.0.0.0` on a node (or pod network namespace) without IPv6.
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Backlog of the listening socket.
const BACKLOG: i32 = 1024;

/// The IPv4 wildcard to use instead of `addr` when binding it failed with `err` for want of
/// IPv6: only for the IPv6 wildcard, and only for `EAFNOSUPPORT` (no IPv6 in the kernel) or
/// `EADDRNOTAVAIL`. A port in use or a permission error stays an error.
pub fn ipv4_fallback(addr: SocketAddr, err: &io::Error) -> Option<SocketAddr> {
    let v6_wildcard = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    let no_ipv6 = matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
    );
    (v6_wildcard && no_ipv6).then(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())))
}

/// A non-blocking, close-on-exec listening socket on exactly `addr`. The IPv6 wildcard is made
/// dual-stack explicitly (`IPV6_V6ONLY` off), so IPv4 clients reach it on every host.
pub fn bind_exact(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = if addr.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    if matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified()) {
        rustix::net::sockopt::set_ipv6_v6only(&fd, false)?;
    }
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(TcpListener::from(fd))
}

/// Binds `addr` with `bind`, or the IPv4 wildcard when [`ipv4_fallback`] says so; `on_fallback`
/// hears about it (the container log). `bind` is injectable so a test can play a node without
/// IPv6.
pub fn bind_with<L>(
    addr: SocketAddr,
    mut bind: impl FnMut(SocketAddr) -> io::Result<L>,
    on_fallback: impl FnOnce(SocketAddr, &io::Error),
) -> io::Result<L> {
    match bind(addr) {
        Ok(listener) => Ok(listener),
        Err(err) => match ipv4_fallback(addr, &err) {
            Some(v4) => {
                on_fallback(v4, &err);
                bind(v4)
            }
            None => Err(err),
        },
    }
}

/// The listener for `addr` (see [`bind_with`]), reporting a fallback on the container's stderr.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_with(addr, bind_exact, |v4, err| {
        eprintln!("wasmkube: cannot listen on {addr} ({err}): no IPv6 here; listening on {v4}");
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv6Addr, TcpStream};

    use super::*;

    fn err(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn only_the_v6_wildcard_falls_back_and_only_without_ipv6() {
        let any6: SocketAddr = "[::]:8080".parse().expect("addr");
        let v4: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(ipv4_fallback(any6, &err(libc::EAFNOSUPPORT)), Some(v4));
        assert_eq!(ipv4_fallback(any6, &err(libc::EADDRNOTAVAIL)), Some(v4));
        assert_eq!(ipv4_fallback(any6, &err(libc::EADDRINUSE)), None);
        assert_eq!(ipv4_fallback(any6, &err(libc::EACCES)), None);
        let one: SocketAddr = "[::1]:8080".parse().expect("addr");
        assert_eq!(ipv4_fallback(one, &err(libc::EAFNOSUPPORT)), None);
        assert_eq!(ipv4_fallback(v4, &err(libc::EADDRNOTAVAIL)), None);
    }

    #[test]
    fn a_node_without_ipv6_gets_an_ipv4_listener_and_a_log_line() {
        let mut tried = Vec::new();
        let mut reported = None;
        let listener = bind_with(
            "[::]:0".parse().expect("addr"),
            |a| {
                tried.push(a);
                if a.is_ipv6() {
                    Err(err(libc::EAFNOSUPPORT))
                } else {
                    bind_exact(a)
                }
            },
            |v4, e| reported = Some((v4, e.raw_os_error())),
        )
        .expect("fallback");
        assert_eq!(
            tried,
            [
                "[::]:0".parse::<SocketAddr>().expect("addr"),
                "0.0.0.0:0".parse().expect("addr")
            ]
        );
        assert_eq!(
            reported,
            Some(("0.0.0.0:0".parse().expect("addr"), Some(libc::EAFNOSUPPORT)))
        );
        let port = listener.local_addr().expect("addr").port();
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("IPv4 reaches it");

        let in_use = bind_with(
            "[::]:0".parse().expect("addr"),
            |_| Err::<TcpListener, _>(err(libc::EADDRINUSE)),
            |_, _| panic!("no fallback for a port in use"),
        );
        assert_eq!(
            in_use.expect_err("stays an error").raw_os_error(),
            Some(libc::EADDRINUSE)
        );
    }

    fn echo_once(listener: &TcpListener, client: &mut TcpStream) -> SocketAddr {
        client.write_all(b"ping").expect("write");
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
        peer
    }

    #[test]
    fn the_v6_wildcard_serves_ipv4_and_ipv6_clients() {
        let listener = bind("[::]:0".parse().expect("addr")).expect("bind");
        let local = listener.local_addr().expect("addr");
        assert!(local.is_ipv6(), "this host has IPv6: no fallback expected");
        assert!(
            !rustix::net::sockopt::ipv6_v6only(&listener).expect("getsockopt"),
            "dual-stack whatever net.ipv6.bindv6only says"
        );
        let mut v4 = TcpStream::connect((Ipv4Addr::LOCALHOST, local.port())).expect("IPv4");
        let peer = echo_once(&listener, &mut v4);
        assert_eq!(peer.ip().to_canonical(), Ipv4Addr::LOCALHOST);
        let mut v6 = TcpStream::connect((Ipv6Addr::LOCALHOST, local.port())).expect("IPv6");
        let peer = echo_once(&listener, &mut v6);
        assert_eq!(peer.ip(), Ipv6Addr::LOCALHOST);
    }
}
