//! systemd socket activation: the listening socket a service manager
//! (systemd, or `systemd-socket-activate` in tests) opened for us and
//! passed as file descriptor 3, announced by `LISTEN_PID` and `LISTEN_FDS`
//! (`sd_listen_fds(3)`). Taking ownership of a descriptor by number is
//! this crate's third `unsafe` (three small blocks); everything this module hands out is a
//! checked, owned `std::net::TcpListener`.
//!
//! It never reads or touches any other descriptor, and it does not change
//! the process environment (`remove_var` is `unsafe` in Rust 2024 because
//! other threads may read it): the server's one spawning function removes
//! [`ENV_VARS`] from every child instead, and the adopted socket is marked
//! close-on-exec so no child inherits it.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
use nix::sys::stat::{SFlag, fstat};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The variables of the protocol; children must not inherit them.
pub const ENV_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Set once fd 3 has been taken: ownership can be taken only once.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Why the passed socket cannot be used. The server refuses to start: an
/// operator who set up socket activation wants that socket, not a fallback.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS` is not a number.
    #[error("LISTEN_FDS={0:?} is not a number of descriptors")]
    BadCount(String),
    /// Not exactly one descriptor.
    #[error("LISTEN_FDS={0}: hotsock takes exactly one socket (one ListenStream= in the .socket unit)")]
    NotOne(usize),
    /// fd 3 is not a listening TCP socket.
    #[error("fd 3 (from LISTEN_FDS) {0}")]
    NotAListener(String),
    /// The activated socket was taken before (a second call).
    #[error("the activated socket (fd 3) was already taken")]
    Taken,
}

/// The listening socket passed by the service manager, when `LISTEN_PID`
/// names this process; `Ok(None)` when nothing was passed to us. Checks
/// that fd 3 is an open, listening, IPv4 or IPv6 stream socket before
/// taking it, and marks it close-on-exec.
#[allow(unsafe_code)]
pub fn take_listener() -> Result<Option<TcpListener>, ActivationError> {
    let for_us =
        std::env::var("LISTEN_PID").ok().and_then(|pid| pid.trim().parse::<u32>().ok()) == Some(std::process::id());
    let Some(count) = std::env::var("LISTEN_FDS").ok().filter(|_| for_us) else { return Ok(None) };
    match count.trim().parse::<usize>() {
        Ok(1) => {}
        Ok(n) => return Err(ActivationError::NotOne(n)),
        Err(_) => return Err(ActivationError::BadCount(count)),
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ActivationError::Taken);
    }
    let fd = LISTEN_FDS_START;
    // SAFETY: F_GETFD reads the descriptor's flags and takes no pointer;
    // any integer is a valid argument (a closed one gives EBADF).
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
        return Err(ActivationError::NotAListener("is not open".into()));
    }
    // SAFETY: fd 3 is open (checked above) and nothing in this function
    // closes it, so it stays open for as long as the borrow lives.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    // Checked before ownership is taken: if fd 3 is something else this
    // process owns (LISTEN_FDS set by mistake), it is left alone.
    check_listener(borrowed).map_err(ActivationError::NotAListener)?;
    // SAFETY: fd 3 is an open listening TCP socket and, by the protocol
    // whose LISTEN_PID names this process, was opened by the service
    // manager for this process before it started; nothing else in this
    // process owns it (hotsock refers to it nowhere else, and TAKEN lets
    // this line run once per process), so the OwnedFd is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| ActivationError::NotAListener(format!("cannot be made close-on-exec: {e}")))?;
    Ok(Some(TcpListener::from(owned)))
}

/// Whether `fd` is a listening TCP socket; what it is instead, if not.
fn check_listener(fd: BorrowedFd<'_>) -> Result<(), String> {
    let stat = fstat(fd).map_err(|e| format!("cannot be inspected: {e}"))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err("is not a socket".into());
    }
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(format!("is a {other:?} socket, not a stream socket (ListenStream=)")),
        Err(e) => return Err(format!("cannot be inspected: {e}")),
    }
    match getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => return Err("is not listening (Accept=yes passes connections: use Accept=no)".into()),
        Err(e) => return Err(format!("cannot be inspected: {e}")),
    }
    let address = getsockname::<SockaddrStorage>(fd.as_raw_fd()).map_err(|e| format!("has no address: {e}"))?;
    match address.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => Ok(()),
        other => Err(format!("is a {other:?} socket, not TCP over IPv4 or IPv6")),
    }
}
