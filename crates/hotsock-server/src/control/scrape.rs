//! The metrics listener (`[metrics] listen`): `/metrics` for Prometheus,
//! `/healthz` (the process serves) and `/readyz` (every slot's worker of the
//! serving generation is Ready and the server is not stopping) for load
//! balancers and orchestrators, and `/` a live dashboard over
//! `/status.json` (what `hotsock status --json` shows). Plain HTTP/1.1, one request per connection,
//! bounded in size and time; it never touches a client connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::control::status::server_status;
use crate::net::http::{self, Refusal};
use crate::shared::Shared;
use crate::wire::{ServerStatus, WorkerPhase};

/// The live dashboard: plain HTML and JavaScript, no build step; it polls
/// `/status.json` once a second.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Largest request head the metrics listener reads: a scrape is one line
/// and a few headers.
const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;
/// Time a scraper has to send its request and take the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept, so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves until the server exits.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(&shared, stream, peer.to_string())).await;
                });
            }
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

async fn answer(shared: &Shared, mut stream: TcpStream, peer: String) {
    let response = match http::read_head(&mut stream, REQUEST_HEAD_BYTES_MAX, &peer).await {
        Ok(None) => return,
        Err(Refusal::Plain { method, path }) => route(shared, &method, &path),
        Ok(Some(_)) => {
            http::response(400, "Bad Request", &[], b"this listener serves /metrics, /healthz and /readyz\n")
        }
        Err(refusal) => refusal.response(),
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

fn route(shared: &Shared, method: &str, path: &str) -> Vec<u8> {
    if method != "GET" && method != "HEAD" {
        return http::response(405, "Method Not Allowed", &[("Allow", b"GET, HEAD")], b"GET only\n");
    }
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/metrics" => {
            let body = render(shared);
            http::response(200, "OK", &[("Content-Type", b"text/plain; version=0.0.4; charset=utf-8")], body.as_bytes())
        }
        "/healthz" => http::response(200, "OK", &[], b"ok\n"),
        "/" => http::response(200, "OK", &[("Content-Type", b"text/html; charset=utf-8")], DASHBOARD.as_bytes()),
        "/status.json" => match serde_json::to_vec(&server_status(shared)) {
            Ok(body) => http::response(
                200,
                "OK",
                &[("Content-Type", b"application/json"), ("Cache-Control", b"no-store")],
                &body,
            ),
            Err(_) => http::response(500, "Internal Server Error", &[], b"status did not serialize\n"),
        },
        "/readyz" => match readiness(&server_status(shared)) {
            Ok(()) => http::response(200, "OK", &[], b"ready\n"),
            Err(why) => http::response(503, "Service Unavailable", &[], format!("not ready: {why}\n").as_bytes()),
        },
        _ => http::response(404, "Not Found", &[], b"not found: try /, /metrics, /healthz, /readyz or /status.json\n"),
    }
}

/// Ready: not stopping, and every slot's current worker is Ready on the
/// generation serving (task slots follow their own reloads).
pub(crate) fn readiness(status: &ServerStatus) -> Result<(), String> {
    if status.stopping {
        return Err("the server is stopping".into());
    }
    if status.workers.is_empty() {
        // The supervisor has not published its first view yet.
        return Err("the workers are starting".into());
    }
    // A node cut off from its cluster serves a split view (uid sends,
    // channels and presence stop at its edge): a balancer should prefer
    // the others until Redis is back.
    if let Some(cluster) = status.cluster.as_ref().filter(|c| !c.redis_connected) {
        let why = cluster.last_error.as_deref().unwrap_or("reconnecting");
        return Err(format!("cluster: redis unreachable ({why})"));
    }
    for slot in &status.workers {
        if slot.phase != WorkerPhase::Ready {
            return Err(format!("slot {} is {}", slot.slot, slot.phase.name()));
        }
        if slot.role == "event" && slot.generation != status.generation {
            return Err(format!("slot {} runs generation {}, not {}", slot.slot, slot.generation, status.generation));
        }
    }
    Ok(())
}

/// Brings the registry up to date from a status snapshot and renders it.
fn render(shared: &Shared) -> String {
    let status = server_status(shared);
    let m = &shared.metrics;
    m.gauge("hotsock_up_seconds", &[], status.uptime_s as f64);
    m.gauge("hotsock_connections", &[], status.connections as f64);
    m.total("hotsock_connections_accepted_total", &[], status.accepted_total);
    m.gauge("hotsock_generation", &[], status.generation as f64);
    m.gauge("hotsock_reloads_queued", &[], status.reloads_queued as f64);
    m.gauge("hotsock_stopping", &[], f64::from(u8::from(status.stopping)));
    m.gauge("hotsock_tasks_queued", &[], status.tasks.queued as f64);
    m.total("hotsock_tasks_completed_total", &[], status.tasks.completed);
    m.total("hotsock_tasks_failed_total", &[], status.tasks.failed);
    m.total("hotsock_tasks_refused_total", &[], status.tasks.refused);
    let c = &status.channels;
    m.gauge("hotsock_channels", &[], c.channels as f64);
    m.gauge("hotsock_channel_memberships", &[], c.memberships as f64);
    m.gauge("hotsock_channel_history_bytes", &[], c.history_bytes as f64);
    m.total("hotsock_channel_publications_total", &[], c.publications);
    m.total("hotsock_channel_deliveries_total", &[], c.deliveries);
    m.total("hotsock_channel_replayed_total", &[], c.replayed);
    m.total("hotsock_channel_recoveries_total", &[("outcome", "recovered".into())], c.recovered);
    m.total("hotsock_channel_recoveries_total", &[("outcome", "unrecovered".into())], c.unrecovered);
    m.total("hotsock_channel_refused_total", &[], c.refused);
    if let Some(cluster) = &status.cluster {
        m.gauge("hotsock_cluster_redis_up", &[], f64::from(u8::from(cluster.redis_connected)));
        m.gauge("hotsock_cluster_nodes", &[], cluster.nodes as f64);
        m.total("hotsock_cluster_routed_total", &[], cluster.routed);
        m.total("hotsock_cluster_received_total", &[], cluster.received);
        m.total("hotsock_cluster_dropped_total", &[], cluster.dropped);
        m.total("hotsock_cluster_refetched_total", &[], cluster.refetched);
        m.total("hotsock_cluster_lost_total", &[], cluster.lost);
        m.total("hotsock_cluster_outages_total", &[], cluster.outages);
    }
    for table in &status.tables {
        let labels = [("table", table.name.clone())];
        m.gauge("hotsock_table_rows", &labels, table.rows as f64);
        m.gauge("hotsock_table_capacity_rows", &labels, f64::from(table.capacity));
    }
    for slot in &status.workers {
        let labels = [("slot", slot.slot.to_string()), ("role", slot.role.clone())];
        m.gauge("hotsock_events_in_flight", &labels, slot.queued as f64);
        m.total("hotsock_events_dispatched_total", &labels, slot.dispatched);
        m.total("hotsock_events_acked_total", &labels, slot.acked);
        m.total("hotsock_events_redelivered_total", &labels, slot.redelivered);
        m.total("hotsock_events_dropped_total", &labels, slot.dropped);
        m.total("hotsock_worker_crashes_total", &labels, slot.crashes);
        m.total("hotsock_worker_panics_total", &labels, slot.panics);
        m.total("hotsock_worker_recycled_total", &labels, slot.recycled);
        m.gauge("hotsock_worker_generation", &labels, slot.generation as f64);
        for phase in ["starting", "ready", "suspended", "draining", "exited"] {
            let labels = [labels[0].clone(), labels[1].clone(), ("phase", phase.to_owned())];
            m.gauge("hotsock_worker_phase", &labels, f64::from(u8::from(slot.phase.name() == phase)));
        }
        for (cause, count) in &slot.exit_counts {
            let labels = [labels[0].clone(), ("cause", cause.clone())];
            m.total("hotsock_worker_exits_total", &labels, *count);
        }
    }
    m.render()
}
