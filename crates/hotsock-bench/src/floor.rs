//! The floor of `fanout`: the least any server can spend per delivery on
//! this host. One thread; a publication is framed once and the same bytes
//! are written to every member of its channel with one `write(2)` each, no
//! queue, no task per member, no copy. It speaks the Node.js `ws` peer's
//! protocol (`/?join=CHANNEL` answered with `ready`, `pub:CHANNEL:DATA`
//! from a publisher), so the same load generator drives it. What it costs
//! per delivery is what the kernel costs, which no real server goes below;
//! the other targets are read against it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Rooms = Arc<Mutex<HashMap<String, Vec<WebSocketStream<TcpStream>>>>>;

pub(crate) fn serve(port: u16) -> Result<()> {
    // One thread, like the Node.js loop it stands beside.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let rooms = Rooms::default();
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, rooms.clone()));
        }
    })
}

async fn connection(stream: TcpStream, rooms: Rooms) {
    let mut channel = None;
    // The library's callback type fixes the error's size.
    #[allow(clippy::result_large_err)]
    let remember = |request: &Request, response: Response| {
        channel = request.uri().query().and_then(|q| q.strip_prefix("join=")).map(str::to_owned);
        Ok(response)
    };
    let config = WebSocketConfig::default().read_buffer_size(crate::load::READ_BUFFER_BYTES);
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, remember, Some(config)).await else {
        return;
    };
    if let Some(channel) = channel {
        // A member only receives; the publisher's connection writes to it.
        if ws.send(Message::text("ready")).await.is_ok() {
            rooms.lock().unwrap_or_else(PoisonError::into_inner).entry(channel).or_default().push(ws);
        }
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else { continue };
        let Some((channel, data)) = text.as_str().strip_prefix("pub:").and_then(|rest| rest.split_once(':')) else {
            continue;
        };
        let frame = text_frame(data.as_bytes());
        let mut rooms = rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(members) = rooms.get_mut(channel) {
            // A member whose socket cannot take the whole frame at once is
            // dropped (its deliveries go missing from the count): the floor
            // keeps no queue, and at the bench's rates no buffer fills.
            members.retain(|member| matches!(member.get_ref().try_write(&frame), Ok(n) if n == frame.len()));
        }
    }
}

/// An unmasked, final text frame (RFC 6455 section 5.2), as a server sends.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::text_frame;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    #[test]
    fn frames_match_the_library_for_each_length_form() {
        for len in [0, 5, 125, 126, 4000, 65535, 65536] {
            let payload = vec![b'x'; len];
            let ours = text_frame(&payload);
            let mut theirs = Vec::new();
            Frame::message(payload, OpCode::Data(Data::Text), true).format(&mut theirs).expect("formatting into a Vec");
            assert_eq!(ours, theirs, "payload of {len} bytes");
        }
    }
}
