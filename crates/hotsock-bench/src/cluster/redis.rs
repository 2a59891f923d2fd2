//! The `redis-server` the `cluster` scenario starts for itself: Debian's
//! binary on a free 127.0.0.1 port with nothing persisted (the flags of
//! the testkit's `RedisServer`), killed on drop, and the one query the
//! scenario makes of it, `INFO commandstats`, over a raw TCP connection.
//! It never talks to a Redis it did not start.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::free_port;

/// Debian's redis-server, as the tests use it.
const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// How long redis-server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest reply read (`INFO commandstats` is a few KiB).
const REPLY_BYTES_MAX: usize = 1 << 20;

/// A running redis-server of this benchmark.
pub(crate) struct Redis {
    child: Child,
    pub(crate) port: u16,
    /// Its working directory (`--dir`), removed on drop.
    dir: PathBuf,
}

impl Redis {
    /// Starts one and waits until it answers PING.
    pub(crate) fn start() -> Result<Redis> {
        if !std::path::Path::new(REDIS_SERVER).exists() {
            bail!("{REDIS_SERVER} not found: apt-get install redis-server (bash .ci/run does)");
        }
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("hotsock-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let redis = Redis { child, port, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        while redis.query("PING").map(|r| r != "PONG").unwrap_or(true) {
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not answer PING within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Calls of each command so far (`INFO commandstats`: commands a Lua
    /// script runs are counted too, under their own names), without the
    /// `INFO` calls this benchmark makes.
    pub(crate) fn command_calls(&self) -> Result<BTreeMap<String, u64>> {
        Ok(parse_commandstats(&self.query("INFO commandstats")?))
    }

    /// Sends one inline command and reads one reply: a simple string, an
    /// error or a bulk string.
    fn query(&self, line: &str) -> Result<String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        (&stream).write_all(format!("{line}\r\n").as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        reader.read_line(&mut head)?;
        let head = head.trim_end();
        match head.split_at_checked(1) {
            Some(("+", text)) => Ok(text.to_owned()),
            Some(("-", error)) => bail!("redis: {line}: {error}"),
            Some(("$", len)) => {
                let len: usize = len.parse().with_context(|| format!("redis: bad bulk length {len:?}"))?;
                if len > REPLY_BYTES_MAX {
                    bail!("redis: {line}: a {len}-byte reply");
                }
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body)?;
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            _ => bail!("redis: {line}: unexpected reply {head:?}"),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `cmdstat_NAME:calls=N,...` lines into calls per name, `info` left out.
fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for line in info.lines() {
        // cmdstat_evalsha:calls=12,usec=340,usec_per_call=28.33,...
        let Some((name, stats)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
            continue;
        };
        let count = stats.split(',').find_map(|kv| kv.strip_prefix("calls=")?.parse::<u64>().ok());
        if let Some(count) = count
            && name != "info"
        {
            calls.insert(name.to_owned(), count);
        }
    }
    calls
}

/// What happened between two `command_calls`: calls per command.
pub(crate) fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, n)| (name.clone(), n.saturating_sub(before.get(name).copied().unwrap_or(0))))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_counted_per_command_without_our_info_calls() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=3,usec=90,usec_per_call=30.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=7,usec=70\r\n",
        );
        assert_eq!(before, BTreeMap::from([("evalsha".to_owned(), 3)]));
        let after = parse_commandstats("cmdstat_evalsha:calls=5,usec=150\r\ncmdstat_publish:calls=2,usec=4\r\n");
        assert_eq!(delta(&before, &after), BTreeMap::from([("evalsha".to_owned(), 2), ("publish".to_owned(), 2)]));
    }
}
