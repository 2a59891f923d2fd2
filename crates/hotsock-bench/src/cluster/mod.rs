//! `cluster`: what a second node costs. In one invocation it starts a
//! redis-server of its own (`redis.rs`), a single node without `[cluster]`
//! (the baseline) and a 2-node cluster on that Redis, all running the test
//! worker, and measures on each (`cluster_load.rs`):
//!
//! - `send_to_uid` round trips between uid-bound pairs: both on the single
//!   node, both on one cluster node, and one on each cluster node (every
//!   send crosses nodes through Redis);
//! - publish-to-delivery latency and deliveries per CPU-second for one
//!   channel's members: all on the single node, or split over the two
//!   cluster nodes with the publisher on one of them;
//! - server memory per idle uid-bound connection on a cluster node vs the
//!   single node (and Redis's for their presence);
//! - Redis commands per `send_to_uid`, per publication and per connection,
//!   from `INFO commandstats` with the idle heartbeats' rate subtracted.
//!
//! The cases take turns in rounds and their figures cover every round, so
//! the noise of a shared machine falls on all of them. Loopback only;
//! every phase is bounded and the run stops by itself.

mod delay;
mod load;
mod redis;
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use self::delay::Delay;
pub(crate) use self::delay::RTT_MAX_US;
use self::load::{Fanout, Pair, connect_all, round_trips};
use self::redis::{Redis, delta};
use crate::procfs::{self, CpuMeter, CpuUse};
use crate::{Target, chart, report as section, sibling, spawn_hotsock};

/// How long the idle cluster is watched to learn its background Redis
/// commands (heartbeats) per second, which are subtracted from the counts.
const IDLE_SPAN: Duration = Duration::from_secs(2);
/// Settling time before reading memory.
const SETTLE: Duration = Duration::from_millis(800);
/// The first uid of the idle connections (the pairs use uids below it).
const IDLE_UID_BASE: u64 = 1 << 40;
/// Uids each round-trip case may use (two per pair).
const UIDS_PER_CASE: usize = 100_000;
/// The aim of issue 17: a cluster's p99 at most this many times the
/// single node's.
const AIM_RATIO: f64 = 2.0;

pub(crate) struct Params {
    /// Pair counts, one set of round-trip cases each.
    pub(crate) pairs: Vec<usize>,
    pub(crate) members: usize,
    pub(crate) rate: u64,
    pub(crate) seconds: u64,
    pub(crate) rounds: usize,
    pub(crate) size: usize,
    pub(crate) idle: usize,
    /// Added to every round trip between a node and Redis (0: none).
    pub(crate) redis_rtt_us: u64,
}

/// The three deployments, all up for the whole run. Fields drop in
/// order: the nodes stop before their Redis, so none reports losing it.
struct Deployments {
    single: Target,
    cluster: [Target; 2],
    /// The nodes' way to Redis when it is made to look remote; held so it
    /// lives as long as they do.
    _relay: Option<Delay>,
    redis: Redis,
}

fn node_config(cluster: Option<(&str, &str)>) -> Result<String> {
    let mut config = format!(
        "max_connections = 20000\n[workers]\ncommand = [\"{}\"]\ncount = 1\n",
        sibling("hotsock-testworker")?.display()
    );
    if let Some((redis, id)) = cluster {
        config.push_str(&format!("[cluster]\nredis = \"{redis}\"\nnode_id = \"{id}\"\n"));
    }
    Ok(config)
}

impl Deployments {
    fn start(redis_rtt_us: u64) -> Result<Deployments> {
        let redis = Redis::start()?;
        let relay = if redis_rtt_us > 0 { Some(Delay::start(redis.port, redis_rtt_us)?) } else { None };
        let url = relay.as_ref().map_or_else(|| redis.url(), Delay::url);
        let dir =
            |name: &str| std::env::temp_dir().join(format!("hotsock-bench-cluster-{}-{name}", std::process::id()));
        let single = spawn_hotsock("single node", dir("single"), &node_config(None)?, &[])?;
        let c0 = spawn_hotsock("cluster node c0", dir("c0"), &node_config(Some((&url, "c0")))?, &[])?;
        let c1 = spawn_hotsock("cluster node c1", dir("c1"), &node_config(Some((&url, "c1")))?, &[])?;
        Ok(Deployments { single, cluster: [c0, c1], _relay: relay, redis })
    }
}

/// What one case added up over its rounds.
#[derive(Default)]
struct Tally {
    /// Round trips, or publications.
    ops: u64,
    seconds: f64,
    node_cpu_s: f64,
    redis_cpu_s: f64,
    /// Redis calls per command name, background subtracted.
    commands: BTreeMap<String, f64>,
    client: CpuUse,
    latency: Option<Histogram<u64>>,
}

impl Tally {
    fn quantile(&self, q: f64) -> u64 {
        self.latency.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }

    fn add_latency(&mut self, latency: Histogram<u64>) -> Result<()> {
        match &mut self.latency {
            Some(total) => total.add(latency)?,
            None => self.latency = Some(latency),
        }
        Ok(())
    }
}

/// Adds `calls` to `into`, less what the idle cluster issues in `seconds`.
fn subtract_idle(
    calls: BTreeMap<String, u64>,
    background: &BTreeMap<String, f64>,
    seconds: f64,
    into: &mut BTreeMap<String, f64>,
) {
    for (name, n) in calls {
        let idle = background.get(&name).copied().unwrap_or(0.0) * seconds;
        *into.entry(name).or_default() += (n as f64 - idle).max(0.0);
    }
}

/// One measured span of a case: CPU of its nodes and of Redis, and the
/// Redis commands it caused.
struct Span<'a> {
    started: Instant,
    nodes: Vec<CpuMeter>,
    redis: CpuMeter,
    deployments: &'a Deployments,
    calls: BTreeMap<String, u64>,
}

impl<'a> Span<'a> {
    fn start(deployments: &'a Deployments, nodes: &[&Target]) -> Result<Span<'a>> {
        Ok(Span {
            calls: deployments.redis.command_calls()?,
            started: Instant::now(),
            nodes: nodes.iter().map(|n| CpuMeter::start(n.child.id())).collect(),
            redis: CpuMeter::start(deployments.redis.pid()),
            deployments,
        })
    }

    fn stop(self, tally: &mut Tally, background: &BTreeMap<String, f64>) -> Result<()> {
        let seconds = self.started.elapsed().as_secs_f64();
        let uses: Vec<CpuUse> = self.nodes.iter().map(CpuMeter::stop).collect();
        tally.node_cpu_s += uses.iter().map(|u| u.server_cores).sum::<f64>() * seconds;
        tally.redis_cpu_s += self.redis.stop().server_cores * seconds;
        tally.client = uses.first().copied().unwrap_or_default();
        tally.seconds += seconds;
        let calls = delta(&self.calls, &self.deployments.redis.command_calls()?);
        subtract_idle(calls, background, seconds, &mut tally.commands);
        Ok(())
    }
}

/// Server RSS (with workers) before and after opening idle connections,
/// each bound to its own uid; for a cluster node also Redis's growth and
/// the commands the connections caused.
struct Memory {
    name: &'static str,
    rss0_kib: u64,
    rss_kib: u64,
    redis_growth_kib: Option<u64>,
    commands: Option<BTreeMap<String, f64>>,
}

async fn memory(
    d: &Deployments,
    target: &Target,
    count: usize,
    background: Option<&BTreeMap<String, f64>>,
) -> Result<Memory> {
    let pids = target.pids();
    tokio::time::sleep(SETTLE).await;
    let rss0_kib = procfs::rss_kib(&pids);
    let redis0_kib = procfs::rss_kib(&[d.redis.pid()]);
    let calls0 = d.redis.command_calls()?;
    let started = Instant::now();
    let clients = connect_all(target.port, count, |i| format!("uid={}", IDLE_UID_BASE + i as u64)).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_kib = procfs::rss_kib(&pids);
    eprintln!("   {}: {count} idle connections, RSS {rss0_kib} -> {rss_kib} KiB", target.name);
    let mut memory = Memory { name: target.name, rss0_kib, rss_kib, redis_growth_kib: None, commands: None };
    if let Some(background) = background {
        let mut commands = BTreeMap::new();
        let calls = delta(&calls0, &d.redis.command_calls()?);
        subtract_idle(calls, background, started.elapsed().as_secs_f64(), &mut commands);
        memory.commands = Some(commands);
        memory.redis_growth_kib = Some(procfs::rss_kib(&[d.redis.pid()]).saturating_sub(redis0_kib));
    }
    drop(clients);
    Ok(memory)
}

/// Which nodes a round-trip case puts A and B on.
#[derive(Clone, Copy)]
enum Trip {
    Single,
    ClusterLocal,
    ClusterCross,
}

impl Trip {
    const ALL: [Trip; 3] = [Trip::Single, Trip::ClusterLocal, Trip::ClusterCross];

    fn name(self) -> &'static str {
        match self {
            Trip::Single => "single node, no `[cluster]` (baseline)",
            Trip::ClusterLocal => "2-node cluster, A and B on c0",
            Trip::ClusterCross => "2-node cluster, A on c0, B on c1",
        }
    }

    fn ports(self, d: &Deployments) -> (u16, u16) {
        match self {
            Trip::Single => (d.single.port, d.single.port),
            Trip::ClusterLocal => (d.cluster[0].port, d.cluster[0].port),
            Trip::ClusterCross => (d.cluster[0].port, d.cluster[1].port),
        }
    }

    fn nodes(self, d: &Deployments) -> Vec<&Target> {
        match self {
            Trip::Single => vec![&d.single],
            Trip::ClusterLocal | Trip::ClusterCross => d.cluster.iter().collect(),
        }
    }
}

/// The cases of each round in turn, reversed every other round so that no
/// case always runs first.
fn turn<T: Copy>(cases: &[T], round: usize) -> Vec<(usize, T)> {
    let mut order: Vec<(usize, T)> = cases.iter().copied().enumerate().collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// The round-trip cases at one number of pairs.
struct TripSet {
    pairs: usize,
    /// One per `Trip::ALL`.
    tallies: Vec<Tally>,
}

async fn measure_trips(
    d: &Deployments,
    p: &Params,
    pairs: usize,
    set: usize,
    background: &BTreeMap<String, f64>,
) -> Result<TripSet> {
    let pad = "x".repeat(p.size);
    let mut open = Vec::new();
    for (c, case) in Trip::ALL.iter().enumerate() {
        let (a_port, b_port) = case.ports(d);
        let mut of_case = Vec::with_capacity(pairs);
        for i in 0..pairs {
            // Uids distinct across cases and sets, so no presence is shared.
            let a_uid = 1 + ((set * Trip::ALL.len() + c) * UIDS_PER_CASE + 2 * i) as u64;
            of_case.push(Pair::open(a_port, b_port, a_uid, a_uid + 1).await?);
        }
        open.push(of_case);
    }
    let mut tallies: Vec<Tally> = Trip::ALL.iter().map(|_| Tally::default()).collect();
    for round in 0..p.rounds {
        for (c, case) in turn(&Trip::ALL, round) {
            let span = Span::start(d, &case.nodes(d))?;
            let trips = round_trips(&mut open[c], Instant::now() + Duration::from_secs(p.seconds), &pad).await?;
            span.stop(&mut tallies[c], background)?;
            tallies[c].ops += trips.count;
            tallies[c].add_latency(trips.latency)?;
        }
    }
    for (case, tally) in Trip::ALL.iter().zip(&tallies) {
        eprintln!(
            "== cluster round trip, {pairs} pairs, {}: {} round trips, p99 {} us",
            case.name(),
            tally.ops,
            tally.quantile(0.99)
        );
    }
    drop(open);
    // Let the closes' presence removals pass before counting again.
    tokio::time::sleep(SETTLE).await;
    Ok(TripSet { pairs, tallies })
}

/// Fan-out cases: the single node, and the cluster with the members split
/// over both nodes and the publisher on c0.
const FANOUT_CASES: [&str; 2] =
    ["single node, no `[cluster]` (baseline)", "2-node cluster, members split over c0 and c1, publisher on c0"];

async fn measure_fanout(
    d: &Deployments,
    p: &Params,
    background: &BTreeMap<String, f64>,
) -> Result<Vec<(Tally, u64, u64)>> {
    let pad = "x".repeat(p.size);
    let half = p.members / 2;
    let mut fanouts = vec![
        Fanout::open(&[d.single.port], p.members, d.single.port).await?,
        Fanout::open(&[d.cluster[0].port, d.cluster[1].port], half, d.cluster[0].port).await?,
    ];
    let nodes: [Vec<&Target>; 2] = [vec![&d.single], d.cluster.iter().collect()];
    let mut tallies: Vec<Tally> = FANOUT_CASES.iter().map(|_| Tally::default()).collect();
    for round in 0..p.rounds {
        for (c, _) in turn(&FANOUT_CASES, round) {
            let span = Span::start(d, &nodes[c])?;
            fanouts[c].span(p.rate, Duration::from_secs(p.seconds), &pad).await?;
            span.stop(&mut tallies[c], background)?;
        }
    }
    let mut rows = Vec::new();
    for (fanout, mut tally) in fanouts.into_iter().zip(tallies) {
        let (received, expected) = (fanout.received(), fanout.expected());
        tally.ops = fanout.publications;
        tally.add_latency(fanout.finish().await?)?;
        rows.push((tally, received, expected));
    }
    for (name, (tally, received, expected)) in FANOUT_CASES.iter().zip(&rows) {
        eprintln!("== cluster fan-out, {name}: {received} of {expected} deliveries, p99 {} us", tally.quantile(0.99));
    }
    Ok(rows)
}

pub(crate) fn run(p: &Params, out: &Path) -> Result<()> {
    if let Some(n) = p.pairs.iter().find(|n| **n == 0 || **n > UIDS_PER_CASE / 2) {
        anyhow::bail!("--pairs {n}: each count must be between 1 and {}", UIDS_PER_CASE / 2);
    }
    if p.members < 2 || p.members % 2 == 1 {
        anyhow::bail!("--members {}: an even number, at least 2 (half on each cluster node)", p.members);
    }
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_average = load_average.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let d = Deployments::start(p.redis_rtt_us)?;
    let (background, memories, trips, fanouts) = runtime.block_on(async {
        // Both nodes registered and heartbeating before the idle span.
        tokio::time::sleep(SETTLE).await;
        let before = d.redis.command_calls()?;
        tokio::time::sleep(IDLE_SPAN).await;
        let idle = delta(&before, &d.redis.command_calls()?);
        let background: BTreeMap<String, f64> =
            idle.into_iter().map(|(name, n)| (name, n as f64 / IDLE_SPAN.as_secs_f64())).collect();
        let memories = vec![
            memory(&d, &d.single, p.idle, None).await?,
            memory(&d, &d.cluster[1], p.idle, Some(&background)).await?,
        ];
        // Let the closes' presence removals pass before counting again.
        tokio::time::sleep(SETTLE).await;
        let mut trips = Vec::new();
        for (set, pairs) in p.pairs.iter().enumerate() {
            trips.push(measure_trips(&d, p, *pairs, set, &background).await?);
        }
        let fanouts = measure_fanout(&d, p, &background).await?;
        Ok::<_, anyhow::Error>((background, memories, trips, fanouts))
    })?;
    let text = report::text(p, &load_average, &background, &memories, &trips, &fanouts);
    chart::json("cluster", &report::json(&memories, &trips, &fanouts));
    section::write_section(out, "cluster", &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    drop(d);
    Ok(())
}
