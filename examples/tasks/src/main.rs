//! Task workers, as in the ThinkPHP + Swoole setup the project started from:
//! a browser asks for something slow, an event worker hands it to a task
//! worker, and the browser is told when it is done while its connection
//! keeps answering other messages.
//!
//! Messages (JSON text):
//! - `{"cmd":"report","args":{"seconds":3,"name":"sales"}}` → `{"type":"accepted","task":ID}` at once, then
//!   `{"type":"done","task":ID,"result":{...}}` when the task worker is done (or `{"type":"error",...}`).
//! - `{"cmd":"ping"}` → `{"type":"pong"}`, answered even while reports run.

use std::time::{Duration, Instant};

use hotsock_worker::{App, Bytes, Ctx, Message, Task};
use serde_json::{Value, json};

/// Longest report a client may ask for.
const REPORT_SECONDS_MAX: u64 = 30;

struct Reports;

impl App for Reports {
    async fn on_message(&self, ctx: &Ctx, message: Message) {
        let conn = message.conn;
        let request: Value = match message.text().map(serde_json::from_str) {
            Some(Ok(value)) => value,
            _ => {
                ctx.push(conn, json!({"type": "error", "message": "send JSON text"}).to_string());
                return;
            }
        };
        match request["cmd"].as_str() {
            Some("ping") => ctx.push(conn, json!({"type": "pong"}).to_string()),
            Some("report") => {
                let args = request.get("args").cloned().unwrap_or(json!({}));
                let handle = match ctx.task(args.to_string()).await {
                    Ok(handle) => handle,
                    Err(error) => {
                        ctx.push(conn, json!({"type": "error", "message": error.to_string()}).to_string());
                        return;
                    }
                };
                let task = handle.id();
                ctx.push(conn, json!({"type": "accepted", "task": task}).to_string());
                // Wait for the result off this connection's lane, so its
                // next messages are answered meanwhile.
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let reply = match handle.result().await {
                        Ok(result) => {
                            let result: Value = serde_json::from_slice(&result).unwrap_or(Value::Null);
                            json!({"type": "done", "task": task, "result": result})
                        }
                        Err(error) => json!({"type": "error", "task": task, "message": error.to_string()}),
                    };
                    ctx.push(conn, reply.to_string());
                });
            }
            _ => ctx.push(conn, json!({"type": "error", "message": "unknown cmd; use report or ping"}).to_string()),
        }
    }

    /// Builds a (pretend) report: takes `seconds`, then returns figures.
    async fn on_task(&self, ctx: &Ctx, task: Task) -> Bytes {
        let started = Instant::now();
        let args: Value = serde_json::from_slice(&task.payload).unwrap_or(json!({}));
        let seconds = args["seconds"].as_u64().unwrap_or(3).min(REPORT_SECONDS_MAX);
        let name = args["name"].as_str().unwrap_or("report").to_owned();
        // A zero-second report does no waiting at all: even a zero sleep
        // would wait for the timer's next millisecond tick.
        if seconds > 0 {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
        }
        let result = json!({
            "name": name,
            "rows": 1000 + task.id % 100,
            "took_ms": started.elapsed().as_millis() as u64,
            "by": format!("task worker slot {} gen {}", ctx.slot(), ctx.generation()),
            "redelivered": task.redelivered,
        });
        Bytes::from(result.to_string())
    }
}

fn main() {
    if let Err(error) = hotsock_worker::run(Reports) {
        eprintln!("tasks worker: {error}");
        std::process::exit(1);
    }
}
