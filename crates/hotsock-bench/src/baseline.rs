//! The ceiling: an echo server in one process, on the same WebSocket library
//! with hotsock's write batch and no worker hop.
//! It answers `v1:<message>` like the echo example, and batches its writes
//! the same way (feed every ready reply, flush once).

use anyhow::Result;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// hotsock's connection write batch (64 KiB) and message limit; the read
/// buffer is the bench's (`load::READ_BUFFER_BYTES`: this server reads its
/// sockets through it, where hotsock reads through 64 KiB per thread).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(crate::load::READ_BUFFER_BYTES)
        .write_buffer_size(64 << 10)
        .max_message_size(Some(1 << 20))
}

pub(crate) fn serve(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await else {
                    return;
                };
                while let Some(Ok(first)) = ws.next().await {
                    let mut next = Some(first);
                    while let Some(message) = next.take() {
                        if let Message::Text(text) = message
                            && ws.feed(Message::text(format!("v1:{text}"))).await.is_err()
                        {
                            return;
                        }
                        next = ws.next().now_or_never().flatten().and_then(Result::ok);
                    }
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}
