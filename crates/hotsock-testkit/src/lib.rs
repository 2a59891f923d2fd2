//! Test support: start the real `hotsock` binary with real worker processes
//! on 127.0.0.1, talk to it with a real WebSocket client, and wait on
//! conditions with deadlines instead of sleeping.
//!
//! Binaries are found next to the test executable (`target/<profile>/`), so
//! the workspace's binaries must be built first: `.ci/run` does
//! `cargo build --workspace --bins` before the tests. What else the tests
//! need (Python venv, Node modules, Chromium, PHP) is checked in `prereq.rs`.

mod prereq;

mod redis;
pub use prereq::{chromium, node, php, promtool, promtool_check, python, redis_server};
pub use redis::RedisServer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before it fails. Generous
/// because CI machines are shared and slow; a passing test never waits this
/// long.
pub const WAIT: Duration = Duration::from_secs(20);

/// Lines of the server log a failing test prints.
const LOG_TAIL_LINES: usize = 60;

/// A client connection.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The path of a workspace binary built in the same profile as the test;
/// fails the test, saying how to build it, if it is missing or older than
/// its sources.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    prereq::built_binary(name, &path);
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// Polls `check` until it returns `Some`, failing the test after [`WAIT`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates it.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hotsock-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `hotsock start` process with its own config and run dir.
#[derive(Debug)]
pub struct TestServer {
    /// Holds the config, run dir and log.
    pub dir: TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The `hotsock start` process.
    pub child: Option<Child>,
    /// Where clients connect.
    pub addr: SocketAddr,
}

impl TestServer {
    /// Writes a config from `toml` (which must not set `server.listen` or
    /// `server.run_dir`; a free port is chosen) and starts the server,
    /// returning once every worker is ready.
    pub fn start(toml: &str) -> TestServer {
        Self::start_with_env(toml, &[])
    }

    /// Like [`TestServer::start`], with extra environment for the server
    /// (and so its workers).
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> TestServer {
        let server = Self::spawn(toml, env);
        server.wait_ready();
        server
    }

    /// Starts the server without waiting for it to become ready.
    pub fn spawn(toml: &str, env: &[(&str, &str)]) -> TestServer {
        Self::spawn_through(&[], None, toml, env)
    }

    /// Starts `hotsock start` through a launcher (`launcher` then the
    /// hotsock command line: `systemd-socket-activate -l ADDR`), without
    /// waiting. Clients connect to `addr` when given (the launcher's
    /// socket), else to the config's `server.listen`.
    pub fn spawn_through(launcher: &[&str], addr: Option<SocketAddr>, toml: &str, env: &[(&str, &str)]) -> TestServer {
        let dir = TempDir::new("srv");
        let port = free_port();
        let config = dir.path().join("hotsock.toml");
        let text = if toml.contains("[server]") {
            toml.replacen("[server]", &format!("[server]\nlisten = \"127.0.0.1:{port}\""), 1)
        } else {
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{toml}")
        };
        std::fs::write(&config, text).expect("write config");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(bin("hotsock"));
                command
            }
            None => Command::new(bin("hotsock")),
        };
        command.args(["start", "-c"]).arg(&config).stdout(Stdio::null()).stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn hotsock");
        let addr = addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], port)));
        TestServer { dir, config, child: Some(child), addr }
    }

    /// Waits until the status says every worker is ready.
    pub fn wait_ready(&self) {
        wait_for("all workers ready", || {
            let status = self.try_status()?;
            let workers = status["workers"].as_array()?;
            (!workers.is_empty() && workers.iter().all(|w| w["state"] == "ready")).then_some(())
        });
        wait_for("listener accepting", || std::net::TcpStream::connect(self.addr).ok());
    }

    /// Runs the `hotsock` CLI against this server's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("hotsock")).args(args).arg("-c").arg(&self.config).output().expect("run hotsock CLI")
    }

    /// `hotsock status --json`, or `None` if it fails.
    pub fn try_status(&self) -> Option<Value> {
        let output = self.cli(&["status", "--json"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// `hotsock status --json`.
    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|| panic!("status failed; server log:\n{}", self.log()))
    }

    /// Column `name` of slot `slot`'s row in the text of `hotsock status`
    /// (split at whitespace: the names before `RSS KiB` are single words);
    /// the whole text as the error when there is no such cell.
    pub fn status_cell(&self, slot: usize, name: &str) -> Result<String, String> {
        let text = String::from_utf8_lossy(&self.cli(&["status"]).stdout).into_owned();
        let cell = (|| {
            let header = text.lines().find(|l| l.starts_with("SLOT "))?;
            let index = header.split_whitespace().position(|h| h == name)?;
            let row = text.lines().find(|l| l.starts_with(&format!("{slot} ")))?;
            row.split_whitespace().nth(index).map(str::to_owned)
        })();
        cell.ok_or(text)
    }

    /// `hotsock clients --json`.
    pub fn clients(&self) -> Value {
        let output = self.cli(&["clients", "--json"]);
        assert!(output.status.success(), "clients failed: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("clients json")
    }

    /// Pid of the worker in `slot`.
    pub fn worker_pid(&self, slot: usize) -> u32 {
        self.status()["workers"][slot]["pid"].as_u64().expect("pid") as u32
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `ws://` URL for a path.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Waits for the server process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let child = self.child.as_mut().expect("child");
        let status = wait_for("server exit", || child.try_wait().expect("try_wait"));
        self.child = None;
        status.code()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The server's own words are the first thing to read about a
            // failed test; the directory holding them is about to go.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- last {} lines of the server log ---\n{}", tail.len(), tail.join("\n"));
        }
        if let Some(mut child) = self.child.take() {
            // Killing the server kills its workers too (parent-death signal).
            let _ = child.kill();
            let _ = child.wait();
        }
        // A server that took over by `hotsock upgrade` is not our child.
        if let Some(pid) = self.server_pid()
            && alive(pid)
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl TestServer {
    /// The pid in the run directory's pid file: the server serving now
    /// (after `hotsock upgrade`, not the process this handle started).
    pub fn server_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("run").join("hotsock.pid")).ok()?.trim().parse().ok()
    }
}

/// A copy of the `hotsock` binary that reports `VERSION+TAG` (see
/// `hotsock_server::version`): a second build for upgrade tests, made by
/// writing the tag over the NUL bytes after the build-tag marker.
pub fn stamped_hotsock(dir: &Path, tag: &str) -> PathBuf {
    const MARKER: &[u8] = b"hotsock-build-tag:";
    assert!(!tag.is_empty() && tag.len() < 30, "a tag of 1 to 29 bytes");
    let mut bytes = std::fs::read(bin("hotsock")).expect("read the hotsock binary");
    let at: Vec<usize> = bytes
        .windows(MARKER.len() + 30)
        .enumerate()
        .filter(|(_, w)| w.starts_with(MARKER) && w[MARKER.len()..].iter().all(|&b| b == 0))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "exactly one build-tag marker in the binary");
    bytes[at[0] + MARKER.len()..at[0] + MARKER.len() + tag.len()].copy_from_slice(tag.as_bytes());
    let path = dir.join(format!("hotsock-{tag}"));
    std::fs::write(&path, bytes).expect("write the stamped binary");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    path
}

/// A port that was free a moment ago (the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Connects a WebSocket client.
pub async fn connect(url: &str) -> Client {
    let (client, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    client
}

/// Connects to a server running `hotsock-testworker` and reads its
/// `open CONN slot=S` greeting; returns the client and its connection id.
pub async fn open_testworker(server: &TestServer, path: &str) -> (Client, u64) {
    open_testworker_url(&server.url(path)).await
}

/// [`open_testworker`] for a whole URL (for tasks that do not hold the
/// server).
pub async fn open_testworker_url(url: &str) -> (Client, u64) {
    let mut client = connect(url).await;
    let greeting = recv(&mut client).await;
    let conn = greeting
        .strip_prefix("open ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|conn| conn.parse().ok())
        .unwrap_or_else(|| panic!("expected the test worker's open greeting, got {greeting:?}"));
    (client, conn)
}

/// After an edit of the echo prefix from `v1:` to `v2:`: asks `after`
/// every `every` until the new code answers `v2:after` on this (already
/// open) connection, failing if anything but the old or new answer comes
/// or `within` passes (`log` is shown then).
pub async fn until_new_code_answers(
    client: &mut Client,
    within: std::time::Duration,
    every: std::time::Duration,
    log: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        send(client, "after").await;
        let reply = recv(client).await;
        if reply == "v2:after" {
            return;
        }
        assert_eq!(reply, "v1:after", "only the old or the new code may answer");
        assert!(std::time::Instant::now() < deadline, "the edit did not go live; server log:\n{}", log());
        tokio::time::sleep(every).await;
    }
}

/// Sends a text message.
pub async fn send(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.expect("send");
}

/// The next data message (text or binary as lossy text); pings and pongs
/// are skipped. Panics on close or timeout.
pub async fn recv(client: &mut Client) -> String {
    loop {
        match next(client).await {
            Some(Message::Text(text)) => return text.to_string(),
            Some(Message::Binary(data)) => return String::from_utf8_lossy(&data).into_owned(),
            Some(Message::Close(frame)) => panic!("connection closed while waiting for a message: {frame:?}"),
            Some(_) => {}
            None => panic!("connection ended while waiting for a message"),
        }
    }
}

/// The next frame of any kind, `None` at the end of the stream.
pub async fn next(client: &mut Client) -> Option<Message> {
    next_within(client, WAIT).await
}

/// [`next`] with its own deadline, for tests whose server is configured to
/// take longer than [`WAIT`] to answer (a long handshake timeout).
pub async fn next_within(client: &mut Client, wait: Duration) -> Option<Message> {
    match tokio::time::timeout(wait, client.next()).await.expect("timed out waiting for a frame") {
        Some(Ok(message)) => Some(message),
        Some(Err(_)) | None => None,
    }
}

/// The next text message on the read half of a split client; panics if the
/// connection ends or nothing arrives within [`WAIT`].
pub async fn next_text(stream: &mut futures_util::stream::SplitStream<Client>) -> String {
    loop {
        let message = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("timed out waiting for a text message")
            .expect("connection closed while waiting for a text message")
            .expect("connection error while waiting for a text message");
        if let Message::Text(text) = message {
            return text.to_string();
        }
    }
}

/// Reads until the server closes; returns the close code (None if the
/// stream ended without a close frame).
pub async fn close_code(client: &mut Client) -> Option<u16> {
    close_code_within(client, WAIT).await
}

/// [`close_code`] with its own deadline per frame.
pub async fn close_code_within(client: &mut Client, wait: Duration) -> Option<u16> {
    loop {
        match next_within(client, wait).await {
            Some(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Some(_) => {}
            None => return None,
        }
    }
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Sends a raw HTTP request over TCP and returns everything the server sent
/// back before closing.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("response timed out");
    String::from_utf8_lossy(&response).into_owned()
}

/// The matchmaker's result for a player (its first message that is not
/// `waiting`), and the close code that follows it.
pub async fn matchmaker_outcome(client: &mut Client) -> (Value, Option<u16>) {
    matchmaker_outcome_within(client, WAIT).await
}

/// [`matchmaker_outcome`] with its own deadline per frame.
pub async fn matchmaker_outcome_within(client: &mut Client, wait: Duration) -> (Value, Option<u16>) {
    let message = loop {
        match next_within(client, wait).await {
            Some(Message::Text(text)) => {
                let message = serde_json::from_str::<Value>(&text).expect("json");
                if message["type"] != "waiting" {
                    break message;
                }
            }
            Some(_) => {}
            None => panic!("closed before a result"),
        }
    };
    (message, close_code_within(client, wait).await)
}
