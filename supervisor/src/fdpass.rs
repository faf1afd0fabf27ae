//! Messages that carry fds (`SCM_RIGHTS`) over a Unix socket: the spawner's
//! requests and answers ([`crate::spawner`]), and the job's files that come
//! with an init's spec ([`crate::handoff`]). Every fd received is owned at
//! once, so that none leaks, and a message whose data or fds were cut off
//! is told apart ([`whole`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most fds one message carries.
pub const MAX_FDS: usize = 2;

/// Sends `data` with `fds` (at most [`MAX_FDS`]) in one `sendmsg`; returns
/// how many bytes of `data` went (all of it on a `SOCK_SEQPACKET` socket;
/// on a stream socket, the fds go with the first of them).
pub fn send(socket: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("more fds than a message here carries"));
    }
    retry(|| {
        rustix::net::sendmsg(
            socket,
            &[IoSlice::new(data)],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        )
    })
}

/// Receives one message into `data`, with the fds it carried (at most
/// [`MAX_FDS`] fit; more are cut off, which [`whole`] tells), owned and
/// close-on-exec.
pub fn receive(
    socket: BorrowedFd<'_>,
    data: &mut [u8],
) -> io::Result<(rustix::net::RecvMsg, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let message = retry(|| {
        rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(data)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        )
    })?;
    let mut fds = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    Ok((message, fds))
}

/// Whether a received message came whole: neither its data nor its fds
/// were cut off.
pub fn whole(message: &rustix::net::RecvMsg) -> bool {
    !message
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
}

/// Runs `call` again while a signal interrupts it.
fn retry<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::INTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn fds_travel_with_the_bytes_they_were_sent_with() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"hello").unwrap();
        assert_eq!(send(a.as_fd(), b"abcd", &[file.as_fd()]).unwrap(), 4);
        let mut data = [0; 4];
        let (message, mut fds) = receive(b.as_fd(), &mut data).unwrap();
        assert!(whole(&message));
        assert_eq!((message.bytes, &data, fds.len()), (4, b"abcd", 1));
        let mut received = std::fs::File::from(fds.pop().unwrap());
        let mut text = String::new();
        received.rewind().unwrap();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
    }
}
