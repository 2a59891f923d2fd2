//! Feeds arbitrary bytes, in arbitrary read-sized chunks, to the frame
//! decoder and both typed decoders. Any panic is a bug: these bytes come from
//! a worker process the server does not trust.
#![no_main]

use bytes::BytesMut;
use hotsock_protocol::{ConnInfo, Decoder, ToServer, ToWorker, decode_conn_list};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoder = Decoder::new(1 << 16);
    let chunk = 1 + data.first().copied().unwrap_or(0) as usize;
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let _ = ConnInfo::decode(&frame.payload);
                    let _ = decode_conn_list(&frame.payload);
                    let _ = ToServer::from_frame(frame.clone());
                    let _ = ToWorker::from_frame(frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
