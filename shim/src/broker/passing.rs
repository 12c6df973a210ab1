//! Descriptors beside messages (`SCM_RIGHTS`): a container's socket to the broker, a cache
//! entry to a container.
use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Writes all of `bytes` to `socket`, with `fd` attached to the first byte.
pub fn send_with(socket: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Err(std::io::Error::other(
            "a descriptor needs a byte to travel with",
        ));
    }
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = loop {
        match rustix::net::sendmsg(
            socket,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::empty(),
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut rest = std::fs::File::from(socket.try_clone_to_owned()?);
    rest.write_all(&bytes[sent..])
}

/// Reads one byte from `socket`, and the descriptor that came with it, if any (close-on-exec).
pub fn recv_first(socket: BorrowedFd<'_>) -> std::io::Result<(u8, Option<OwnedFd>)> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        match rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut passed = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            // Keep the first; the others close when dropped.
            for fd in fds {
                passed.get_or_insert(fd);
            }
        }
    }
    if got.bytes == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((byte[0], passed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_descriptor_travels_with_the_first_byte() {
        let (a, b) = UnixStream::pair().expect("pair");
        let file = std::fs::File::open("/proc/self/exe").expect("open");
        let big = vec![7u8; 1 << 20];
        let writer = std::thread::spawn(move || {
            send_with(a.as_fd(), &big, file.as_fd()).expect("send");
        });
        let (first, fd) = recv_first(b.as_fd()).expect("recv");
        let mut rest = Vec::new();
        (&b).take((1 << 20) - 1)
            .read_to_end(&mut rest)
            .expect("rest");
        writer.join().expect("writer");
        assert_eq!(first, 7);
        assert_eq!(rest.len(), (1 << 20) - 1);
        let fd = fd.expect("a descriptor");
        let st = rustix::fs::fstat(&fd).expect("fstat");
        let exe = rustix::fs::stat("/proc/self/exe").expect("stat");
        assert_eq!((st.st_dev, st.st_ino), (exe.st_dev, exe.st_ino));
    }

    #[test]
    fn no_descriptor_no_problem() {
        let (a, b) = UnixStream::pair().expect("pair");
        (&a).write_all(&[3, 4]).expect("write");
        let (first, fd) = recv_first(b.as_fd()).expect("recv");
        assert_eq!((first, fd.is_none()), (3, true));
    }
}
