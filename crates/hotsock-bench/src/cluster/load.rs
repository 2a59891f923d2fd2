//! The load of the `cluster` scenario, against any node of any deployment:
//! `send_to_uid` round trips between pairs of uid-bound connections, and a
//! publisher fanning out to the members of one channel. Both use only the
//! test worker's commands (`to_uid:UID:X`, `pub:CH:X`, `?uid=`, `?join=`),
//! so a single node and a cluster run the same worker. Every wait has a
//! deadline; loopback only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::fanout::sent_at;

pub(crate) type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connections opened at once.
const CONNECT_BATCH: usize = 100;
/// How long one reply (a round trip's, the worker's greeting) may take
/// before the run is abandoned as broken.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fresh pair or channel may take to carry its first message:
/// a uid's presence and a channel's subscription reach Redis a moment
/// after the worker's `open`, and until then a cluster routes nowhere.
const WARM_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two warm-up attempts.
const WARM_RETRY: Duration = Duration::from_millis(100);
/// After a span's last publication, how long members may take to get it.
const DRAIN: Duration = Duration::from_secs(5);
/// The channel the members join.
const CHANNEL: &str = "bench";

/// Opens `count` connections to `port` with `query`(index), each waiting
/// for the test worker's `open` greeting (which follows the handshake's
/// bind and subscribe).
pub(crate) async fn connect_all(port: u16, count: usize, query: impl Fn(usize) -> String) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count);
    while clients.len() < count {
        let batch = (clients.len()..count).take(CONNECT_BATCH).map(|i| {
            let url = format!("ws://127.0.0.1:{port}/?{}", query(i));
            async move {
                let mut client = crate::load::connect(&url).await?;
                wait_text(&mut client, |t| t.starts_with("open ")).await.with_context(|| url.clone())?;
                Ok::<_, anyhow::Error>(client)
            }
        });
        for client in futures_util::future::join_all(batch).await {
            clients.push(client?);
        }
    }
    Ok(clients)
}

/// Reads until a text satisfying `want`, within `REPLY_TIMEOUT`.
async fn wait_text(client: &mut Client, want: impl Fn(&str) -> bool) -> Result<String> {
    tokio::time::timeout(REPLY_TIMEOUT, async {
        loop {
            match client.next().await {
                Some(Ok(Message::Text(text))) if want(&text) => return Ok(text.as_str().to_owned()),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("{e}"),
                None => bail!("closed"),
            }
        }
    })
    .await
    .with_context(|| format!("no reply within {REPLY_TIMEOUT:?}"))?
}

/// Client A sends `to_uid:B:to_uid:A:SEQ:PAD`; the worker on A's node sends
/// `to_uid:A:SEQ:PAD` to uid B; B's client sends it back as it came; the
/// worker on B's node sends `SEQ:PAD` to uid A. Two `send_to_uid` per
/// round trip, each crossing nodes when A and B are on different ones.
pub(crate) struct Pair {
    a: Option<Client>,
    a_uid: u64,
    b_uid: u64,
    /// B's echo loop.
    b: JoinHandle<()>,
    seq: u64,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.b.abort();
    }
}

/// Round trips of one span: how many, and their latencies in µs.
pub(crate) struct Trips {
    pub(crate) count: u64,
    pub(crate) latency: Histogram<u64>,
}

impl Pair {
    /// A on `a_port`, B on `b_port`, with these uids; returns once a first
    /// round trip has come back.
    pub(crate) async fn open(a_port: u16, b_port: u16, a_uid: u64, b_uid: u64) -> Result<Pair> {
        let mut a = connect_all(a_port, 1, |_| format!("uid={a_uid}")).await?;
        let mut b = connect_all(b_port, 1, |_| format!("uid={b_uid}")).await?;
        let (a, mut b) = (a.pop().context("A")?, b.pop().context("B")?);
        let echo = tokio::spawn(async move {
            while let Some(Ok(message)) = b.next().await {
                if let Message::Text(text) = message
                    && text.starts_with("to_uid:")
                    && b.send(Message::Text(text)).await.is_err()
                {
                    break;
                }
            }
        });
        let mut pair = Pair { a: Some(a), a_uid, b_uid, b: echo, seq: 0 };
        pair.warm_up().await?;
        Ok(pair)
    }

    /// Round trips until one comes back: until both uids are in presence,
    /// a cluster drops the sends.
    async fn warm_up(&mut self) -> Result<()> {
        let deadline = Instant::now() + WARM_TIMEOUT;
        let a = self.a.as_mut().context("A in use")?;
        loop {
            self.seq += 1;
            a.send(Message::text(format!("to_uid:{}:to_uid:{}:{}:", self.b_uid, self.a_uid, self.seq))).await?;
            let want = format!("{}:", self.seq);
            let reply = tokio::time::timeout(WARM_RETRY, async {
                while let Some(Ok(message)) = a.next().await {
                    if matches!(&message, Message::Text(t) if t.starts_with(&want)) {
                        return true;
                    }
                }
                false
            });
            if reply.await.unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("uid {} never reached uid {} within {WARM_TIMEOUT:?}", self.a_uid, self.b_uid);
            }
        }
    }
}

/// Every pair ping-pongs until `end`; returns the pairs for the next span.
pub(crate) async fn round_trips(pairs: &mut [Pair], end: Instant, pad: &str) -> Result<Trips> {
    let mut tasks = Vec::with_capacity(pairs.len());
    for pair in pairs.iter_mut() {
        let mut a = pair.a.take().context("A in use")?;
        let (a_uid, b_uid, first) = (pair.a_uid, pair.b_uid, pair.seq + 1);
        let pad = pad.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3)?;
            let mut seq = first;
            while Instant::now() < end {
                let sent = Instant::now();
                a.send(Message::text(format!("to_uid:{b_uid}:to_uid:{a_uid}:{seq}:{pad}"))).await?;
                let want = format!("{seq}:");
                wait_text(&mut a, |t| t.starts_with(&want)).await.with_context(|| format!("round trip {seq}"))?;
                latency.record((sent.elapsed().as_micros() as u64).max(1))?;
                seq += 1;
            }
            Ok::<_, anyhow::Error>((a, seq - 1, latency))
        }));
    }
    let mut trips = Trips { count: 0, latency: Histogram::new(3)? };
    for (pair, task) in pairs.iter_mut().zip(tasks) {
        let (a, last, latency) = task.await??;
        trips.count += last - pair.seq;
        trips.latency.add(latency)?;
        pair.a = Some(a);
        pair.seq = last;
    }
    Ok(trips)
}

/// One channel's members (on any nodes) and a publisher; the members'
/// reader tasks live as long as this.
pub(crate) struct Fanout {
    publisher: Client,
    members: usize,
    /// Timed deliveries received so far, over every span.
    received: Arc<AtomicU64>,
    readers: Vec<JoinHandle<Vec<u64>>>,
    stop: tokio::sync::watch::Sender<bool>,
    base: Instant,
    /// Publications sent in measured spans, over every span.
    pub(crate) publications: u64,
}

impl Fanout {
    /// Members on each of `member_ports` (`per_port` each), the publisher
    /// on `publisher_port`; returns once every member got a publication.
    pub(crate) async fn open(member_ports: &[u16], per_port: usize, publisher_port: u16) -> Result<Fanout> {
        let base = Instant::now();
        let received = Arc::new(AtomicU64::new(0));
        let warm = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut readers = Vec::new();
        for port in member_ports {
            for mut client in connect_all(*port, per_port, |_| format!("join={CHANNEL}")).await? {
                let (received, warm, mut stop) = (received.clone(), warm.clone(), stop_rx.clone());
                readers.push(tokio::spawn(async move {
                    let (mut latencies, mut warmed) = (Vec::new(), false);
                    loop {
                        let next = tokio::select! {
                            next = client.next() => next,
                            _ = stop.wait_for(|stop| *stop) => break,
                        };
                        let Some(Ok(message)) = next else { break };
                        let Message::Text(text) = message else { continue };
                        if let Some(at) = sent_at(&text) {
                            latencies.push((base.elapsed().as_micros() as u64).saturating_sub(at));
                            received.fetch_add(1, Ordering::Relaxed);
                        } else if text.starts_with('W') && !warmed {
                            warmed = true;
                            warm.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    latencies
                }));
            }
        }
        let mut publisher = connect_all(publisher_port, 1, |_| String::new()).await?.pop().context("publisher")?;
        let members = readers.len();
        let deadline = Instant::now() + WARM_TIMEOUT;
        while warm.load(Ordering::Relaxed) < members as u64 {
            if Instant::now() > deadline {
                bail!(
                    "{} of {members} members got a publication within {WARM_TIMEOUT:?}",
                    warm.load(Ordering::Relaxed)
                );
            }
            publisher.send(Message::text(format!("pub:{CHANNEL}:W"))).await?;
            tokio::time::sleep(WARM_RETRY).await;
        }
        Ok(Fanout { publisher, members, received, readers, stop, base, publications: 0 })
    }

    /// Publishes at `rate` per second for `span`, then waits (at most
    /// `DRAIN`) for every member to get every publication.
    pub(crate) async fn span(&mut self, rate: u64, span: Duration, pad: &str) -> Result<()> {
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let started = Instant::now();
        let end = started + span;
        let mut next = started;
        while Instant::now() < end {
            // Whatever is due goes in one flush: the timer cannot fire
            // once per publication at high rates.
            while next <= Instant::now() {
                let data = format!("T{}:{pad}", self.base.elapsed().as_micros());
                self.publisher.feed(Message::text(format!("pub:{CHANNEL}:{data}"))).await?;
                self.publications += 1;
                next += interval;
            }
            self.publisher.flush().await?;
            tokio::time::sleep_until(next.into()).await;
        }
        let drained_by = Instant::now() + DRAIN;
        while self.received() < self.expected() && Instant::now() < drained_by {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub(crate) fn expected(&self) -> u64 {
        self.publications * self.members as u64
    }

    /// Stops the readers; the latency of every timed delivery, in µs.
    pub(crate) async fn finish(self) -> Result<Histogram<u64>> {
        let _ = self.stop.send(true);
        let mut histogram = Histogram::<u64>::new(3)?;
        for reader in self.readers {
            for latency in reader.await? {
                histogram.record(latency.max(1))?;
            }
        }
        Ok(histogram)
    }
}
