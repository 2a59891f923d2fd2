//! A Redis on another host, as the nodes see it: a TCP relay on 127.0.0.1
//! in front of the scenario's redis-server that holds every chunk of bytes,
//! each way, half the round trip asked for before passing it on (in order, as
//! they were read). Only
//! the nodes go through it; the scenario's own `INFO` queries do not.
//! Threads, not the load generator's runtime: the relay must not steal the
//! runtime's time, nor be delayed by it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The most bytes one read takes.
const CHUNK: usize = 64 << 10;
/// The longest round trip the relay adds (a Redis across a region).
pub(crate) const RTT_MAX_US: u64 = 100_000;

/// The relay, listening until dropped.
pub(crate) struct Delay {
    pub(crate) port: u16,
    stop: Arc<AtomicBool>,
}

impl Delay {
    /// Listens on a free port and relays to `127.0.0.1:upstream`, adding
    /// `rtt_us` to every round trip.
    pub(crate) fn start(upstream: u16, rtt_us: u64) -> Result<Delay> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the Redis relay")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let one_way = Duration::from_micros(rtt_us.min(RTT_MAX_US) / 2);
        let stopping = stop.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                for stream in [&client, &server] {
                    let _ = stream.set_nodelay(true);
                }
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { continue };
                relay(client, server2, one_way);
                relay(server, client2, one_way);
            }
        });
        Ok(Delay { port, stop })
    }

    /// `redis://127.0.0.1:PORT/0`, the relay's.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Bytes read from `from` are written to `to` `one_way` after they were
/// read: one thread reads and stamps, one waits and writes.
fn relay(mut from: TcpStream, mut to: TcpStream, one_way: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now() + one_way, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        while let Ok((due, bytes)) = rx.recv() {
            // A sleep overshoots by tens of microseconds: the delay is at
            // least the one asked for (no spinning: the relay shares the
            // machine's two cores with what it measures).
            if let Some(left) = due.checked_duration_since(Instant::now()) {
                thread::sleep(left);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
