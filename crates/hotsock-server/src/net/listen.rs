//! The listening socket: binding it (or adopting the one systemd passed),
//! and the accept loop that gives each client its own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::error::{ServerError, io_error};
use crate::net::park::ParkState;
use crate::shared::Shared;

/// Pause after a failed accept (out of file descriptors and the like), so
/// the loop does not spin; the backlog keeps the waiting clients.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Binds `server.listen` with the configured backlog (socket2, so the
/// backlog and SO_REUSEADDR are ours to set).
pub(crate) fn bind(addr: SocketAddr, backlog: u32, key: &str) -> Result<TcpListener, ServerError> {
    let context = format!("cannot listen on {addr} ({key})");
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .map_err(io_error(context.clone()))?;
    socket.set_reuse_address(true).map_err(io_error(context.clone()))?;
    socket.bind(&addr.into()).map_err(io_error(context.clone()))?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX)).map_err(io_error(context.clone()))?;
    socket.set_nonblocking(true).map_err(io_error(context.clone()))?;
    TcpListener::from_std(socket.into()).map_err(io_error(context))
}

/// The client listener: the socket systemd passed (socket activation:
/// `LISTEN_PID` names us, fd 3), or else `server.listen` bound here.
pub(crate) fn client_listener(addr: SocketAddr, backlog: u32) -> Result<TcpListener, ServerError> {
    let activated = hotsock_table::activation::take_listener()?;
    let Some(listener) = activated else { return bind(addr, backlog, "server.listen") };
    let context = "cannot use the socket systemd passed";
    listener.set_nonblocking(true).map_err(io_error(context))?;
    let listener = TcpListener::from_std(listener).map_err(io_error(context))?;
    let local = listener.local_addr().map_err(io_error(context))?;
    tracing::info!(
        listen = %local,
        "listening on the socket systemd passed (fd 3, LISTEN_FDS); server.listen = {addr} and server.backlog are not used"
    );
    Ok(listener)
}

/// Accepts until the server stops; one task per connection.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.stop_signal();
    let mut parking = shared.parking.watch();
    loop {
        // A binary upgrade parks every connection: new ones wait in the
        // backlog (not refused) for whichever server serves next.
        if *parking.borrow_and_update() != ParkState::Serving {
            tokio::select! {
                changed = parking.changed() => if changed.is_err() { return },
                () = crate::wait::raised(&mut stop) => return,
            }
            continue;
        }
        tokio::select! {
            changed = parking.changed() => if changed.is_err() { return },
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(crate::net::conn::serve(shared.clone(), stream, peer));
                }
                Err(error) => {
                    // Out of file descriptors and similar: pause instead of
                    // spinning; the backlog keeps the waiting clients.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            () = crate::wait::raised(&mut stop) => return,
        }
    }
}
