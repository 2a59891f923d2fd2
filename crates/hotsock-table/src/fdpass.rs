//! Handing table segments to another process over a Unix socket
//! (`SCM_RIGHTS`). The server sends one byte carrying every segment's file
//! descriptor as the first byte of a worker's socket; the worker receives it
//! before anything else. Receiving needs the crate's second `unsafe` (taking
//! ownership of descriptors the kernel just created for us).

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Most segments one worker can be handed (the config's table count is
/// checked against it).
pub const FILES_MAX: usize = 64;

/// Sends `files` as one byte with `SCM_RIGHTS` (zero files is a plain byte,
/// so the receiver always reads exactly one).
pub fn send_files(socket: &UnixStream, files: &[&File]) -> std::io::Result<()> {
    let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
    send_descriptors(socket, &fds)
}

/// [`send_files`] for descriptors the caller keeps open by other means
/// (a binary upgrade sends each parked connection's socket while its task
/// still holds it). The kernel duplicates them into the message.
pub fn send_descriptors(socket: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(&[0u8])], control, MsgFlags::empty(), None)
        .map_err(std::io::Error::from)?;
    if sent != 1 {
        return Err(std::io::Error::other("could not send the table descriptors"));
    }
    Ok(())
}

/// Receives the byte `send_files` sent and the files it carried. Call it
/// before any other read of the socket (a plain read would discard them).
#[allow(unsafe_code)]
pub fn receive_files(socket: &UnixStream) -> std::io::Result<Vec<File>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; FILES_MAX]);
    let message = recvmsg::<()>(socket.as_fd().as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    if message.bytes != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed before the table preamble",
        ));
    }
    let mut files = Vec::new();
    for control in message.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for fd in fds {
                // SAFETY: the kernel installed `fd` in this process while
                // receiving this message; nothing else refers to it, so
                // taking ownership (and closing it on drop) is sound.
                files.push(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    if message.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::other("too many table descriptors (control message truncated)"));
    }
    Ok(files)
}
