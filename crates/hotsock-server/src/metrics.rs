//! The figures the server counts as things happen, for Prometheus. Most of
//! what `/metrics` shows is read from the hub and the supervisor at scrape
//! time (`control/scrape.rs`); this holds only what nothing else keeps:
//! refusals by reason, message and byte totals, reload outcomes, and the
//! latency histograms.
//!
//! Rendering uses `metrics-exporter-prometheus` (Prometheus text format
//! 0.0.4, which `promtool check metrics` and every Prometheus accept), with
//! its recorder kept here rather than installed process-wide: the server
//! stays a library without global state. `prometheus-client` was the other
//! candidate; it writes OpenMetrics text (`# TYPE x counter` with samples
//! `x_total`, `# EOF`), which the Prometheus text parser behind `promtool
//! check metrics` reads as two inconsistent families.
//!
//! Hot paths touch plain atomics only, one add per batch: the registry is
//! brought up to date from them when someone scrapes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Histogram buckets for handshake latency, in seconds: from a loopback
/// upgrade (a fraction of a millisecond) to a worker deciding slowly.
const HANDSHAKE_BUCKETS_S: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
/// Histogram buckets for reload duration, in seconds: a hard-linked reload
/// of two slots takes milliseconds; a slow start or a canary, seconds.
const RELOAD_BUCKETS_S: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Why an upgrade request was refused, as the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// 400: not HTTP, or a broken upgrade request.
    BadRequest,
    /// 426: HTTP that is not a WebSocket upgrade.
    NotUpgrade,
    /// 431: the head is over `limits.max_request_head_bytes`.
    HeadTooLarge,
    /// 503: `server.max_connections` reached, or the server is stopping.
    AtCapacity,
    /// The worker's handshake handler said no.
    WorkerRejected,
    /// 503: no worker decided within `server.handshake_timeout_ms`.
    HandshakeTimeout,
    /// 403: the Origin is not in `server.allowed_origins`.
    ForbiddenOrigin,
    /// 503: the address holds `limits.max_connections_per_ip`.
    PerIpCap,
    /// 429: the address is over `limits.handshakes_per_ip_per_s`.
    RateLimited,
    /// The TLS handshake failed or did not finish within
    /// `server.handshake_timeout_ms` (no HTTP answer is possible).
    Tls,
}

impl Refused {
    const ALL: [Refused; 10] = [
        Refused::BadRequest,
        Refused::NotUpgrade,
        Refused::HeadTooLarge,
        Refused::AtCapacity,
        Refused::WorkerRejected,
        Refused::HandshakeTimeout,
        Refused::ForbiddenOrigin,
        Refused::PerIpCap,
        Refused::RateLimited,
        Refused::Tls,
    ];

    fn label(self) -> &'static str {
        match self {
            Refused::BadRequest => "bad_request",
            Refused::NotUpgrade => "not_upgrade",
            Refused::HeadTooLarge => "head_too_large",
            Refused::AtCapacity => "at_capacity",
            Refused::WorkerRejected => "worker_rejected",
            Refused::HandshakeTimeout => "handshake_timeout",
            Refused::ForbiddenOrigin => "forbidden_origin",
            Refused::PerIpCap => "per_ip_cap",
            Refused::RateLimited => "rate_limited",
            Refused::Tls => "tls",
        }
    }
}

/// Message and byte totals of one direction.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Of `messages` (out only), those the thread that queued them wrote
    /// to the client's socket itself, waking no connection task.
    direct: AtomicU64,
}

impl Flow {
    /// Messages so far.
    pub(crate) fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Bytes so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts a batch.
    pub(crate) fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a batch written directly (`net/plain.rs`).
    pub(crate) fn add_direct(&self, messages: u64, bytes: u64) {
        self.add(messages, bytes);
        self.direct.fetch_add(messages, Ordering::Relaxed);
    }
}

/// See the module docs.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    refused: [AtomicU64; Refused::ALL.len()],
    /// Client to server.
    pub(crate) received: Flow,
    /// Server to client.
    pub(crate) sent: std::sync::Arc<Flow>,
    handshake: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, None)
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("hotsock_handshake_duration_seconds".into()),
                HANDSHAKE_BUCKETS_S,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("hotsock_reload_duration_seconds".into()),
                    RELOAD_BUCKETS_S,
                )
            });
        // The matchers are constants, so this cannot fail; without buckets
        // the histograms would render as summaries, which is still valid.
        let recorder = builder.unwrap_or_else(|_| PrometheusBuilder::new()).build_recorder();
        let handle = recorder.handle();
        let handshake = recorder.register_histogram(&Key::from_name("hotsock_handshake_duration_seconds"), &metadata());
        let metrics = Metrics {
            recorder,
            handle,
            refused: Default::default(),
            received: Flow::default(),
            sent: std::sync::Arc::default(),
            handshake,
        };
        for (name, help) in HELP {
            metrics.recorder.describe_gauge((*name).into(), None, (*help).into());
        }
        metrics
    }

    /// Counts a refused upgrade request.
    pub(crate) fn refused(&self, why: Refused) {
        let index = Refused::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Total refusals, whatever the reason.
    pub(crate) fn refused_total(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Records how long an accepted connection took from accept to 101.
    pub(crate) fn handshake(&self, took: Duration) {
        self.handshake.record(took.as_secs_f64());
    }

    /// Records how a reload ended.
    pub(crate) fn reload(&self, kind: &'static str, ok: bool, took: Duration) {
        let labels = vec![Label::new("kind", kind), Label::new("outcome", if ok { "ok" } else { "failed" })];
        self.recorder.register_counter(&Key::from_parts("hotsock_reloads_total", labels), &metadata()).increment(1);
        let key = Key::from_parts("hotsock_reload_duration_seconds", vec![Label::new("kind", kind)]);
        self.recorder.register_histogram(&key, &metadata()).record(took.as_secs_f64());
    }

    /// Sets a gauge to a value read at scrape time.
    pub(crate) fn gauge(&self, name: &'static str, labels: &[(&'static str, String)], value: f64) {
        self.recorder.register_gauge(&key(name, labels), &metadata()).set(value);
    }

    /// Sets a counter to a total kept elsewhere.
    pub(crate) fn total(&self, name: &'static str, labels: &[(&'static str, String)], value: u64) {
        self.recorder.register_counter(&key(name, labels), &metadata()).absolute(value);
    }

    /// The text for `/metrics`, after the counters kept here are copied in.
    pub(crate) fn render(&self) -> String {
        for (reason, count) in Refused::ALL.iter().zip(&self.refused) {
            let labels = [("reason", reason.label().to_owned())];
            self.total("hotsock_connections_refused_total", &labels, count.load(Ordering::Relaxed));
        }
        for (direction, flow) in [("in", &self.received), ("out", &self.sent)] {
            let labels = [("direction", direction.to_owned())];
            self.total("hotsock_messages_total", &labels, flow.messages.load(Ordering::Relaxed));
            self.total("hotsock_message_bytes_total", &labels, flow.bytes.load(Ordering::Relaxed));
        }
        self.total("hotsock_messages_direct_total", &[], self.sent.direct.load(Ordering::Relaxed));
        self.handle.render()
    }
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect::<Vec<_>>())
}

/// Every metric with its help text (`promtool` wants one for each).
const HELP: &[(&str, &str)] = &[
    ("hotsock_up_seconds", "Seconds since the server started."),
    ("hotsock_connections", "Client connections open or mid-handshake."),
    ("hotsock_connections_accepted_total", "Client connections upgraded to WebSocket."),
    ("hotsock_connections_refused_total", "Upgrade requests refused, by reason."),
    ("hotsock_messages_total", "WebSocket data messages, by direction (in: from clients)."),
    ("hotsock_message_bytes_total", "Payload bytes of WebSocket data messages, by direction."),
    (
        "hotsock_messages_direct_total",
        "Outgoing messages written to the client's socket by the thread that queued them (no connection task woken).",
    ),
    ("hotsock_handshake_duration_seconds", "From accept to the 101 answer, for accepted connections."),
    ("hotsock_events_in_flight", "Events no worker has acknowledged yet, per slot."),
    ("hotsock_events_dispatched_total", "Events routed to a slot."),
    ("hotsock_events_acked_total", "Events acknowledged by a slot's workers."),
    ("hotsock_events_redelivered_total", "Events handed again to a replacement after a worker ended holding them."),
    ("hotsock_events_dropped_total", "Poison events dropped (their connection closed with 1011)."),
    ("hotsock_worker_phase", "1 for the phase a slot's worker is in, 0 for the others."),
    ("hotsock_worker_generation", "The code generation a slot's worker runs."),
    ("hotsock_worker_crashes_total", "Serving or restarting workers of a slot that failed."),
    ("hotsock_worker_panics_total", "Handler panics the workers of a slot caught and reported."),
    ("hotsock_worker_recycled_total", "Workers of a slot replaced after workers.max_requests."),
    ("hotsock_worker_exits_total", "Worker processes that ended, by slot and cause."),
    ("hotsock_generation", "The generation serving."),
    ("hotsock_reloads_total", "Reloads, by kind and outcome."),
    ("hotsock_reload_duration_seconds", "From a reload's start to its outcome."),
    ("hotsock_reloads_queued", "Reload requests waiting for the one under way."),
    ("hotsock_tasks_queued", "Tasks dispatched and not finished."),
    ("hotsock_tasks_completed_total", "Tasks finished with a result."),
    ("hotsock_tasks_failed_total", "Tasks whose handler failed."),
    ("hotsock_tasks_refused_total", "Task dispatches refused (queue full, no task workers)."),
    ("hotsock_channels", "Channels held (with members or history)."),
    ("hotsock_channel_memberships", "Connection-in-channel memberships."),
    ("hotsock_channel_history_bytes", "Bytes of publications kept in channel histories."),
    ("hotsock_channel_publications_total", "Channel publications."),
    ("hotsock_channel_deliveries_total", "Channel publications queued to members (one per member)."),
    ("hotsock_channel_replayed_total", "Publications replayed to recovering connections."),
    ("hotsock_channel_recoveries_total", "Subscribes from a position, by outcome."),
    ("hotsock_channel_refused_total", "Channel requests refused (limits, bad names)."),
    ("hotsock_cluster_redis_up", "1 while this node reaches its cluster's Redis."),
    ("hotsock_cluster_nodes", "Live cluster nodes at the last heartbeat."),
    ("hotsock_cluster_routed_total", "Messages handed to other nodes (one per node reached)."),
    ("hotsock_cluster_received_total", "Cross-node messages delivered on this node."),
    ("hotsock_cluster_dropped_total", "Cross-node messages that never reached Redis (queue full, Redis away)."),
    ("hotsock_cluster_refetched_total", "Missed Pub/Sub messages read back from a stream."),
    ("hotsock_cluster_lost_total", "Missed cross-node messages no longer in Redis."),
    ("hotsock_cluster_outages_total", "Times this node lost Redis."),
    ("hotsock_table_rows", "Rows in use in a shared table."),
    ("hotsock_table_capacity_rows", "A shared table's capacity."),
    ("hotsock_stopping", "1 while a graceful stop is under way."),
];
