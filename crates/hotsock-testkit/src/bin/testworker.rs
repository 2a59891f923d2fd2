//! A worker for tests: every SDK callback and command behind a text command,
//! plus raw-protocol modes that misbehave on purpose.
//!
//! Text commands (`on_message`): `task:X` (awaits the result), `ftask:X`
//! (fire and forget; `on_finish` reports), `tbench:N` (N increments of
//! `counters`, answered `N ops in US us`), `tincr:KEY` / `tget:KEY` (table
//! `counters`, column `n`), `echo:X`, `seq:N`, `bind:UID`, `to_uid:UID:X`,
//! `broadcast:X`, `info`, `info_of:CONN`, `list`, `close:CODE:REASON`,
//! `push_close:X`, `panic`, `panic_abort` (a panic that aborts the process), `exit`, `sleep:MS:X` (awaits), `block:MS` (blocks
//! the event loop), `threads` (thread count), `count:N:SIZE` (numbered), `flood:N:SIZE`, `binary:X`.
//! Channels: `sub:CH`, `subfrom:CH:EPOCH:OFFSET` (both answer
//! `subscribed CH recovered=B epoch=E offset=N replayed=N` or
//! `sub error: ...`), `unsub:CH`, `pub:CH:X` (no answer), `pubr:CH:X`
//! (answers `published CH offset=N` or `pub error: ...`), `pubx:CH:X` (not
//! to the sender), `members:CH` (JSON `[[conn, uid], ...]`), `channels`,
//! `presence:UID` (JSON `[[node, [conn, ...]], ...]`).
//! Tasks (`on_task`): `sleep:MS:X`, `block:MS:X`, `panic`, anything else.
//! Handshake query: `status=NNN` rejects, `uid=N` binds, `slow=MS` delays,
//! `join=A,B` subscribes, `since=CH.EPOCH.OFFSET,...` subscribes from a
//! position (each answered as `sub:` is, before `open`). `on_join` and
//! `on_leave` append `join conn=C ch=X` / `leave conn=C ch=X` to the log.
//! `on_open` pushes `open CONN slot=S`; lifecycle events are appended to the
//! file named by `TESTWORKER_LOG`.
//!
//! `TESTWORKER_GEN_DIR`: a file `gen<N>` there holding `panic-from=K` makes
//! generation N's workers panic on every message from their Kth on.
//!
//! `TESTWORKER_MODE` (or the file named by `TESTWORKER_MODE_FILE`): `badversion` (answers Hello with version 99),
//! `noready` (never answers), `crash` (exits 2 before Hello),
//! `garbage-once=PATH` (the first process to create PATH answers Ready and
//! then writes a malformed frame on its first event; later ones are normal),
//! `slowstart=MS` (sleeps MS before starting normally: a slow reload).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::BytesMut;
use hotsock_protocol::{Decoder, PROTOCOL_VERSION, Ready, ToServer, ToWorker};
use hotsock_worker::{
    App, Bytes, Close, Ctx, Decision, Error, Finish, Handshake, Join, Leave, Message, Open, Position, Subscribed, Task,
};

/// `panic-from=N` for this generation: every message from the worker's Nth
/// on panics (read at start from `TESTWORKER_GEN_DIR/gen<generation>`).
#[derive(Default)]
struct Test {
    panic_from: std::sync::OnceLock<usize>,
    messages: std::sync::atomic::AtomicUsize,
    /// `remember:X` appends here; it is handed to the slot's next worker.
    memory: std::sync::Mutex<Vec<String>>,
    /// Fire-and-forget tasks: which connection to tell when they finish.
    pending: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
}

fn log(line: String) {
    if let Ok(path) = std::env::var("TESTWORKER_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// How the `sub` commands report a subscribe.
fn subscribed_line(channel: &str, result: Result<Subscribed, Error>) -> String {
    match result {
        Ok(s) => format!(
            "subscribed {channel} recovered={} epoch={:016x} offset={} replayed={}",
            s.recovered, s.epoch, s.offset, s.replayed
        ),
        Err(e) => format!("sub error: {e}"),
    }
}

impl App for Test {
    const HANDLES_HANDSHAKE: bool = true;
    const HANDOFF: bool = true;
    const CHANNEL_EVENTS: bool = true;

    async fn on_join(&self, _ctx: &Ctx, join: Join) {
        log(format!("join conn={} ch={}", join.conn, join.channel));
    }

    async fn on_leave(&self, _ctx: &Ctx, leave: Leave) {
        log(format!("leave conn={} ch={}", leave.conn, leave.channel));
    }

    async fn on_worker_start(&self, ctx: &Ctx, handoff: Option<Bytes>) {
        let handoff = handoff.map(|state| String::from_utf8_lossy(&state).into_owned());
        log(format!(
            "start slot={} gen={} pid={} handoff={}",
            ctx.slot(),
            ctx.generation(),
            std::process::id(),
            handoff.as_deref().unwrap_or("-")
        ));
        if let Some(state) = handoff {
            *self.memory.lock().unwrap_or_else(|p| p.into_inner()) =
                state.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        }
        if let Ok(dir) = std::env::var("TESTWORKER_GEN_DIR")
            && let Ok(mode) = std::fs::read_to_string(format!("{dir}/gen{}", ctx.generation()))
            && let Some(n) = mode.trim().strip_prefix("panic-from=").and_then(|n| n.parse().ok())
        {
            let _ = self.panic_from.set(n);
        }
    }

    async fn on_worker_stop(&self, ctx: &Ctx) -> Option<Bytes> {
        log(format!("stop slot={} pid={}", ctx.slot(), std::process::id()));
        let memory = self.memory.lock().unwrap_or_else(|p| p.into_inner()).join(",");
        Some(Bytes::from(memory))
    }

    async fn on_handshake(&self, ctx: &Ctx, handshake: Handshake) -> Decision {
        let request = &handshake.request;
        if let Some(ms) = request.query("slow").and_then(|v| v.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(status) = request.query("status").and_then(|v| v.parse().ok()) {
            return Decision::reject(status, format!("rejected by test worker with {status}\n"));
        }
        for channel in request.query("join").unwrap_or("").split(',').filter(|c| !c.is_empty()) {
            let result = ctx.subscribe(handshake.conn, channel).await;
            ctx.push(handshake.conn, subscribed_line(channel, result));
        }
        for since in request.query("since").unwrap_or("").split(',').filter(|c| !c.is_empty()) {
            let mut parts = since.splitn(3, '.');
            let (channel, epoch, offset) = (parts.next(), parts.next(), parts.next());
            let (Some(channel), Some(position)) = (channel, epoch.zip(offset).and_then(|(e, o)| Position::parse(e, o)))
            else {
                ctx.push(handshake.conn, format!("sub error: bad since {since}"));
                continue;
            };
            let result = ctx.subscribe_from(handshake.conn, channel, position).await;
            ctx.push(handshake.conn, subscribed_line(channel, result));
        }
        let decision = Decision::accept().header("X-Testworker", "yes");
        match request.query("uid").and_then(|v| v.parse().ok()) {
            Some(uid) => decision.bind(uid),
            None => decision,
        }
    }

    async fn on_open(&self, ctx: &Ctx, open: Open) {
        ctx.push(open.conn, format!("open {} slot={}", open.conn, ctx.slot()));
    }

    async fn on_task(&self, _ctx: &Ctx, task: Task) -> Bytes {
        let text = String::from_utf8_lossy(&task.payload).into_owned();
        if text == "panic" {
            panic!("task panic requested");
        }
        // Blocks the task worker's loop, as a synchronous job does.
        if let Some((ms, rest)) = text.strip_prefix("block:").and_then(|r| r.split_once(':')) {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            return Bytes::from(format!("did {rest}"));
        }
        if let Some((ms, rest)) = text.strip_prefix("sleep:").and_then(|r| r.split_once(':')) {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            return Bytes::from(format!("did {rest}"));
        }
        Bytes::from(format!("did {text}"))
    }

    async fn on_finish(&self, ctx: &Ctx, finish: Finish) {
        let conn = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&finish.task);
        let text = format!(
            "finished {} {} orphaned={}",
            finish.task,
            String::from_utf8_lossy(&finish.payload),
            finish.orphaned
        );
        match conn {
            Some(conn) => ctx.push(conn, text),
            None => ctx.broadcast(text),
        }
    }

    async fn on_close(&self, ctx: &Ctx, close: Close) {
        log(format!("close conn={} code={} slot={}", close.conn, close.code, ctx.slot()));
    }

    async fn on_message(&self, ctx: &Ctx, message: Message) {
        let conn = message.conn;
        let seen = self.messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if self.panic_from.get().is_some_and(|n| seen >= *n) {
            panic!("panic-from mode: message {seen} of this worker");
        }
        let Some(text) = message.text() else {
            ctx.push(conn, message.data.clone());
            return;
        };
        let (command, arg) = text.split_once(':').unwrap_or((text, ""));
        let mark = if message.redelivered { "[redelivered]" } else { "" };
        match command {
            "echo" => ctx.push(conn, format!("{mark}{arg}")),
            "tbench" => {
                let Some(table) = ctx.table("counters") else {
                    ctx.push(conn, "error: no table counters");
                    return;
                };
                let ops: u32 = arg.parse().unwrap_or(0);
                let started = std::time::Instant::now();
                for _ in 0..ops {
                    if let Err(e) = table.incr("bench", "n", 1) {
                        ctx.push(conn, format!("error: {e}"));
                        return;
                    }
                }
                ctx.push(conn, format!("{ops} ops in {} us", started.elapsed().as_micros()));
            }
            "tincr" | "tget" => {
                let Some(table) = ctx.table("counters") else {
                    ctx.push(conn, "error: no table counters");
                    return;
                };
                let result = if command == "tincr" {
                    table.incr(arg, "n", 1).map(|n| n.to_string())
                } else {
                    table.get(arg).map(|row| row.and_then(|r| r.int("n")).map_or("none".into(), |n| n.to_string()))
                };
                ctx.push(conn, result.unwrap_or_else(|e| format!("error: {e}")));
            }
            "task" => {
                let reply = match ctx.task(arg.to_owned()).await {
                    Ok(handle) => match handle.result().await {
                        Ok(result) => format!("{mark}done {}", String::from_utf8_lossy(&result)),
                        Err(e) => format!("{mark}task error: {e}"),
                    },
                    Err(e) => format!("{mark}task error: {e}"),
                };
                ctx.push(conn, reply);
            }
            "ftask" => match ctx.task(arg.to_owned()).await {
                Ok(handle) => {
                    self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(handle.id(), conn);
                    ctx.push(conn, format!("queued {}", handle.id()));
                }
                Err(e) => ctx.push(conn, format!("task error: {e}")),
            },
            // How many threads this worker process runs (workers.threads).
            "threads" => {
                let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
                ctx.push(conn, format!("threads {threads}"));
            }
            "remember" => {
                self.memory.lock().unwrap_or_else(|p| p.into_inner()).push(arg.to_owned());
                ctx.push(conn, "remembered");
            }
            "recall" => {
                let memory = self.memory.lock().unwrap_or_else(|p| p.into_inner()).join(",");
                ctx.push(conn, format!("memory={memory}"));
            }
            // N numbered pushes of SIZE bytes each: `count:N:SIZE`.
            "count" => {
                let (n, size) = arg.split_once(':').unwrap_or((arg, "0"));
                let pad = "x".repeat(size.parse().unwrap_or(0));
                for i in 0..n.parse::<usize>().unwrap_or(0) {
                    ctx.push(conn, format!("{i}:{pad}"));
                }
            }
            "seq" => ctx.push(conn, format!("{mark}seq:{arg}:slot={}", ctx.slot())),
            "bind" => {
                ctx.bind(conn, arg.parse().unwrap_or(0));
                ctx.push(conn, "bound");
            }
            "to_uid" => {
                let (uid, body) = arg.split_once(':').unwrap_or((arg, ""));
                ctx.send_to_uid(uid.parse().unwrap_or(0), body);
            }
            "broadcast" => ctx.broadcast(arg),
            "info" | "info_of" => {
                let target = if command == "info" { conn } else { arg.parse().unwrap_or(0) };
                let reply = match ctx.conn_info(target).await {
                    Ok(Some(info)) => serde_json::json!({
                        "conn": info.conn, "peer": info.peer, "path": info.path,
                        "uid": info.uid, "slot": info.slot, "at": info.connected_at_unix_ms,
                    })
                    .to_string(),
                    Ok(None) => "none".into(),
                    Err(e) => format!("error {e}"),
                };
                ctx.push(conn, reply);
            }
            "list" => {
                let reply = match ctx.connections().await {
                    Ok(ids) => serde_json::json!(ids).to_string(),
                    Err(e) => format!("error {e}"),
                };
                ctx.push(conn, reply);
            }
            "close" => {
                let (code, reason) = arg.split_once(':').unwrap_or((arg, ""));
                ctx.close(conn, code.parse().unwrap_or(1000), reason);
            }
            "push_close" => {
                ctx.push(conn, arg);
                ctx.close(conn, 1000, "done");
            }
            "panic" => panic!("test panic requested by conn {conn}"),
            // A panic the SDK cannot catch: a second panic while unwinding
            // aborts the process (SIGABRT), as a `panic = "abort"` build does.
            "panic_abort" => {
                struct Bomb;
                impl Drop for Bomb {
                    fn drop(&mut self) {
                        panic!("second panic while unwinding");
                    }
                }
                let _bomb = Bomb;
                panic!("panic_abort requested by conn {conn}");
            }
            "exit" => std::process::exit(3),
            // Blocks the worker's event loop (a handler that never yields).
            "block" => {
                std::thread::sleep(Duration::from_millis(arg.parse().unwrap_or(0)));
                ctx.push(conn, "unblocked");
            }
            "sleep" => {
                let (ms, rest) = arg.split_once(':').unwrap_or((arg, ""));
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
                ctx.push(conn, format!("{mark}{rest}"));
            }
            "flood" => {
                let (n, size) = arg.split_once(':').unwrap_or((arg, "1"));
                let chunk = "x".repeat(size.parse().unwrap_or(1));
                for _ in 0..n.parse::<usize>().unwrap_or(0) {
                    ctx.push(conn, chunk.clone());
                }
            }
            "binary" => ctx.push(conn, arg.as_bytes().to_vec()),
            "sub" => {
                let result = ctx.subscribe(conn, arg).await;
                ctx.push(conn, format!("{mark}{}", subscribed_line(arg, result)));
            }
            "subfrom" => {
                let mut parts = arg.splitn(3, ':');
                let (channel, epoch, offset) = (parts.next().unwrap_or(""), parts.next(), parts.next());
                let Some(position) = epoch.zip(offset).and_then(|(e, o)| Position::parse(e, o)) else {
                    ctx.push(conn, format!("sub error: bad position {arg}"));
                    return;
                };
                let result = ctx.subscribe_from(conn, channel, position).await;
                ctx.push(conn, subscribed_line(channel, result));
            }
            "unsub" => {
                ctx.unsubscribe(conn, arg);
                ctx.push(conn, format!("unsubscribed {arg}"));
            }
            "pub" | "pubr" | "pubx" => {
                let (channel, body) = arg.split_once(':').unwrap_or((arg, ""));
                let reply = match command {
                    "pubx" => ctx.publish_except(channel, body, conn),
                    _ => ctx.publish(channel, body),
                };
                if command == "pubr" {
                    let line = match reply.await {
                        Ok(position) => format!("published {channel} offset={}", position.offset),
                        Err(e) => format!("pub error: {e}"),
                    };
                    ctx.push(conn, line);
                }
            }
            "members" => {
                let reply = match ctx.members(arg).await {
                    Ok(members) => {
                        serde_json::json!(members.iter().map(|m| (m.conn, m.uid)).collect::<Vec<_>>()).to_string()
                    }
                    Err(e) => format!("error {e}"),
                };
                ctx.push(conn, reply);
            }
            "presence" => {
                let reply = match arg.parse::<u64>() {
                    Ok(uid) => match ctx.presence(uid).await {
                        Ok(entries) => serde_json::json!(
                            entries.iter().map(|e| (e.node.clone(), e.conns.clone())).collect::<Vec<_>>()
                        )
                        .to_string(),
                        Err(e) => format!("error {e}"),
                    },
                    Err(_) => format!("error not a uid: {arg}"),
                };
                ctx.push(conn, reply);
            }
            "channels" => {
                let reply = match ctx.channels(conn).await {
                    Ok(names) => serde_json::json!(names).to_string(),
                    Err(e) => format!("error {e}"),
                };
                ctx.push(conn, reply);
            }
            _ => ctx.push(conn, format!("unknown command {text}")),
        }
    }
}

/// The worker's socket, taken from stdin, for the raw modes.
fn raw_socket() -> UnixStream {
    let fd = std::io::stdin().as_fd().try_clone_to_owned().expect("stdin socket");
    UnixStream::from(fd)
}

/// Reads frames until one is complete.
fn read_frame(socket: &mut UnixStream, buf: &mut BytesMut) -> Option<ToWorker> {
    let decoder = Decoder::default();
    loop {
        if let Ok(Some(frame)) = decoder.decode(buf) {
            return ToWorker::from_frame(frame).ok();
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn send(socket: &mut UnixStream, message: ToServer) {
    let mut buf = BytesMut::new();
    message.encode(&mut buf);
    let _ = socket.write_all(&buf);
}

fn raw_mode(mode: &str) -> bool {
    if mode == "crash" {
        std::process::exit(2);
    }
    if let Some(ms) = mode.strip_prefix("slowstart=") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        return false;
    }
    if let Some(path) = mode.strip_prefix("garbage-once=") {
        // Only the first process to create the marker misbehaves.
        if std::fs::OpenOptions::new().write(true).create_new(true).open(path).is_err() {
            return false;
        }
    }
    let mut socket = raw_socket();
    // The table descriptors come first, before Hello.
    let _ = hotsock_table::receive_files(&socket);
    let mut buf = BytesMut::new();
    let Some(ToWorker::Hello(_)) = read_frame(&mut socket, &mut buf) else { std::process::exit(1) };
    match mode {
        "badversion" => send(&mut socket, ToServer::Ready(Ready { protocol_version: 99, capabilities: 0 })),
        "noready" => {}
        _ => {
            send(&mut socket, ToServer::Ready(Ready { protocol_version: PROTOCOL_VERSION, capabilities: 0 }));
            while let Some(message) = read_frame(&mut socket, &mut buf) {
                if message.event().is_some() {
                    // A header with an unknown kind: the server must kill us.
                    let mut garbage = vec![0u8; 22];
                    garbage[4] = 0x7f;
                    let _ = socket.write_all(&garbage);
                }
            }
        }
    }
    // Wait for the server to close the socket (or kill us).
    while read_frame(&mut socket, &mut buf).is_some() {}
    std::process::exit(0);
}

/// The misbehaviour mode: `TESTWORKER_MODE`, or the content of the file
/// named by `TESTWORKER_MODE_FILE` (read at start, so each generation can
/// get its own).
fn mode() -> Option<String> {
    let from_file = std::env::var("TESTWORKER_MODE_FILE").ok().and_then(|path| std::fs::read_to_string(path).ok());
    let mode = from_file.or_else(|| std::env::var("TESTWORKER_MODE").ok())?;
    let mode = mode.trim().to_owned();
    (!mode.is_empty()).then_some(mode)
}

fn main() {
    if let Some(mode) = mode() {
        let _ = raw_mode(&mode);
    }
    if let Err(error) = hotsock_worker::run(Test::default()) {
        eprintln!("testworker: {error}");
        std::process::exit(1);
    }
}
