//! The HTTP side of a WebSocket upgrade: reading the request head, checking
//! it, and writing the 101 or an error response.
//!
//! We parse the request ourselves (with `httparse`) instead of letting the
//! WebSocket library do it, because the decision may need a worker, which is
//! asynchronous, and because every refusal must be a proper HTTP answer
//! (400, 426, 431, 503) rather than a dropped socket.

use bytes::{Bytes, BytesMut};
use hotsock_protocol::HandshakeRequest;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Most headers a request may carry; more gets 431.
pub(crate) const MAX_HEADERS: usize = 64;

/// Why an upgrade request was refused before any worker saw it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400: not HTTP, or a broken upgrade request.
    BadRequest(&'static str),
    /// 426: well-formed HTTP that is not a WebSocket upgrade (or a
    /// WebSocket version other than 13).
    UpgradeRequired,
    /// A plain HTTP request (not an upgrade): served from
    /// `server.static_dir` when one is configured, else 426.
    Plain {
        /// The method.
        method: String,
        /// The request target.
        path: String,
    },
    /// 431: the head is larger than `limits.max_request_head_bytes`.
    TooLarge,
}

impl Refusal {
    pub(crate) fn response(&self) -> Vec<u8> {
        match self {
            Refusal::BadRequest(why) => response(400, "Bad Request", &[], format!("bad request: {why}\n").as_bytes()),
            Refusal::UpgradeRequired | Refusal::Plain { .. } => response(
                426,
                "Upgrade Required",
                &[("Upgrade", b"websocket"), ("Sec-WebSocket-Version", b"13")],
                b"This is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket).\n",
            ),
            Refusal::TooLarge => response(431, "Request Header Fields Too Large", &[], b"request head too large\n"),
        }
    }
}

/// A parsed, valid upgrade request.
#[derive(Debug)]
pub(crate) struct Upgrade {
    pub(crate) request: HandshakeRequest,
    pub(crate) key: Vec<u8>,
    /// Bytes the client sent after the head (early WebSocket frames).
    pub(crate) rest: BytesMut,
}

/// Reads until the end of the request head. `Ok(None)` means the client
/// closed before sending a whole head.
pub(crate) async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    max_bytes: usize,
    peer: &str,
) -> Result<Option<Upgrade>, Refusal> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let read = stream.read_buf(&mut buf).await.map_err(|_| Refusal::BadRequest("read failed"))?;
        if read == 0 {
            return Ok(None);
        }
        match parse(&buf, peer)? {
            Some((upgrade, head_len)) => {
                let rest = buf.split_off(head_len);
                return Ok(Some(Upgrade { rest, ..upgrade }));
            }
            None if buf.len() >= max_bytes => return Err(Refusal::TooLarge),
            None => {}
        }
    }
}

/// Parses a request head. `Ok(None)`: incomplete. On success, returns the
/// upgrade and the head's length.
pub(crate) fn parse(buf: &[u8], peer: &str) -> Result<Option<(Upgrade, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::BadRequest("not an HTTP/1.1 request")),
    };
    let has_token = |name: &str, token: &str| {
        req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).any(|h| {
            std::str::from_utf8(h.value)
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::Plain {
            method: req.method.unwrap_or("GET").to_owned(),
            path: req.path.unwrap_or("/").to_owned(),
        });
    }
    if req.method != Some("GET") {
        return Err(Refusal::BadRequest("a WebSocket upgrade must use GET"));
    }
    if !has_token("sec-websocket-version", "13") {
        return Err(Refusal::UpgradeRequired);
    }
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|h| h.value.to_vec())
        .filter(|k| !k.is_empty())
        .ok_or(Refusal::BadRequest("missing Sec-WebSocket-Key"))?;
    let request = HandshakeRequest {
        peer: peer.to_owned(),
        path: req.path.unwrap_or("/").to_owned(),
        headers: req.headers.iter().map(|h| (h.name.to_owned(), Bytes::copy_from_slice(h.value))).collect(),
    };
    Ok(Some((Upgrade { request, key, rest: BytesMut::new() }, head_len)))
}

/// The 101 response accepting an upgrade, with the worker's extra headers.
pub(crate) fn switching_protocols(key: &[u8], extra: &[(String, Bytes)]) -> Vec<u8> {
    let accept = derive_accept_key(key);
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    )
    .into_bytes();
    push_headers(&mut out, extra.iter().map(|(n, v)| (n.as_str(), &v[..])));
    out.extend_from_slice(b"\r\n");
    out
}

/// A complete non-101 response that closes the connection.
pub(crate) fn response(status: u16, reason: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    push_headers(&mut out, headers.iter().copied());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Largest file `server.static_dir` serves.
pub(crate) const STATIC_FILE_MAX_BYTES: u64 = 4 << 20;

/// Answers a plain GET/HEAD from `dir`: `/` is `index.html`; nothing
/// outside `dir` (no `..`, no symlink escape); 404 for anything else.
pub(crate) fn static_file(dir: &std::path::Path, method: &str, target: &str) -> Vec<u8> {
    if method != "GET" && method != "HEAD" {
        return response(405, "Method Not Allowed", &[("Allow", b"GET, HEAD")], b"only GET and HEAD\n");
    }
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let relative = if path.ends_with('/') { format!("{path}index.html") } else { path.to_owned() };
    let not_found = || response(404, "Not Found", &[], b"not found\n");
    if relative.split('/').any(|part| part == ".." || part.contains('\\')) {
        return not_found();
    }
    let Ok(root) = dir.canonicalize() else { return not_found() };
    let Ok(file) = root.join(relative.trim_start_matches('/')).canonicalize() else { return not_found() };
    let Ok(meta) = std::fs::metadata(&file) else { return not_found() };
    if !file.starts_with(&root) || !meta.is_file() || meta.len() > STATIC_FILE_MAX_BYTES {
        return not_found();
    }
    file_response(&file, method)
}

/// Answers a plain GET/HEAD: first `server.static_files` (a path the
/// operator mapped to one file, which may live outside `dir`: nothing of
/// the request is resolved against the file system), then `dir`.
pub(crate) fn static_answer(
    dir: &std::path::Path,
    files: &std::collections::BTreeMap<String, std::path::PathBuf>,
    base: &std::path::Path,
    method: &str,
    target: &str,
) -> Vec<u8> {
    let path = target.split(['?', '#']).next().unwrap_or("/");
    match files.get(path) {
        Some(_) if method != "GET" && method != "HEAD" => static_file(dir, method, target),
        Some(file) => file_response(&base.join(file), method),
        None => static_file(dir, method, target),
    }
}

/// A 200 with the file, or 404 if it cannot be read or is larger than
/// [`STATIC_FILE_MAX_BYTES`].
fn file_response(file: &std::path::Path, method: &str) -> Vec<u8> {
    let not_found = || response(404, "Not Found", &[], b"not found\n");
    match std::fs::metadata(file) {
        Ok(meta) if meta.is_file() && meta.len() <= STATIC_FILE_MAX_BYTES => {}
        _ => return not_found(),
    }
    let Ok(body) = std::fs::read(file) else { return not_found() };
    let content_type: &[u8] = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => b"text/html; charset=utf-8",
        Some("js") => b"text/javascript; charset=utf-8",
        Some("css") => b"text/css; charset=utf-8",
        Some("json") => b"application/json",
        Some("svg") => b"image/svg+xml",
        Some("png") => b"image/png",
        Some("ico") => b"image/x-icon",
        _ => b"application/octet-stream",
    };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        String::from_utf8_lossy(content_type),
        body.len()
    )
    .into_bytes();
    if method == "GET" {
        out.extend_from_slice(&body);
    }
    out
}

/// A rejection decided by a worker: its status, headers and body.
pub(crate) fn worker_rejection(status: u16, headers: &[(String, Bytes)], body: &[u8]) -> Vec<u8> {
    let status = if (400..=599).contains(&status) { status } else { 403 };
    let extra: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), &v[..])).collect();
    response(status, reason_phrase(status), &extra, body)
}

fn push_headers<'a>(out: &mut Vec<u8>, headers: impl Iterator<Item = (&'a str, &'a [u8])>) {
    for (name, value) in headers {
        // A header a worker gives us must not be able to split the response.
        let clean = |b: &u8| *b != b'\r' && *b != b'\n';
        if name.bytes().all(|b| clean(&b) && b != b':') && value.iter().all(clean) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nEXTRA";

    #[test]
    fn valid_upgrade_parses_and_keeps_the_rest() {
        let (upgrade, len) = parse(UPGRADE, "1.2.3.4:5").expect("ok").expect("complete");
        assert_eq!(upgrade.request.path, "/chat?x=1");
        assert_eq!(&UPGRADE[len..], b"EXTRA");
        let response = String::from_utf8(switching_protocols(&upgrade.key, &[])).expect("utf8");
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn plain_http_is_reported_as_plain() {
        let refusal = parse(b"GET /x?y HTTP/1.1\r\nHost: a\r\n\r\n", "p").err();
        assert_eq!(refusal, Some(Refusal::Plain { method: "GET".into(), path: "/x?y".into() }));
    }

    #[test]
    fn static_files_stay_inside_their_directory() {
        let dir = std::env::temp_dir().join(format!("hotsock-static-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("index.html"), "<h1>hi</h1>").expect("write");
        let ok = String::from_utf8(static_file(&dir, "GET", "/?a=1")).expect("utf8");
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.contains("text/html") && ok.ends_with("<h1>hi</h1>"));
        for bad in ["/../etc/passwd", "/sub/../../x", "/missing.js", "/sub/"] {
            assert!(static_file(&dir, "GET", bad).starts_with(b"HTTP/1.1 404"), "{bad}");
        }
        assert!(static_file(&dir, "POST", "/").starts_with(b"HTTP/1.1 405"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn static_files_serve_exactly_the_paths_named() {
        let root = std::env::temp_dir().join(format!("hotsock-static-named-{}", std::process::id()));
        std::fs::create_dir_all(root.join("www")).expect("mkdir");
        std::fs::create_dir_all(root.join("lib")).expect("mkdir");
        std::fs::write(root.join("www/index.html"), "<h1>page</h1>").expect("write");
        std::fs::write(root.join("lib/client.js"), "export {};").expect("write");
        std::fs::write(root.join("lib/secret.txt"), "SECRET").expect("write");
        let files = std::collections::BTreeMap::from([("/client.js".to_owned(), "lib/client.js".into())]);
        let answer = |method: &str, target: &str| {
            String::from_utf8(static_answer(&root.join("www"), &files, &root, method, target)).expect("utf8")
        };
        let js = answer("GET", "/client.js?v=2");
        assert!(js.starts_with("HTTP/1.1 200") && js.contains("text/javascript") && js.ends_with("export {};"), "{js}");
        assert!(answer("GET", "/").ends_with("<h1>page</h1>"));
        for other in ["/secret.txt", "/client.js/", "/Client.js", "/lib/client.js", "/../lib/secret.txt"] {
            let text = answer("GET", other);
            assert!(text.starts_with("HTTP/1.1 404") && !text.contains("SECRET"), "{other}: {text}");
        }
        assert!(answer("POST", "/client.js").starts_with("HTTP/1.1 405"));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn garbage_gets_400_and_partial_waits() {
        assert!(matches!(parse(b"\x16\x03\x01garbage\r\n\r\n", "p"), Err(Refusal::BadRequest(_))));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost:", "p"), Ok(None)));
    }

    #[test]
    fn header_injection_is_dropped() {
        let out = worker_rejection(401, &[("X-A".into(), Bytes::from_static(b"1\r\nSet-Cookie: x"))], b"no");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(!text.contains("Set-Cookie"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// The upgrade request's header lines, before shuffling.
        const HEADERS: [(&str, &str); 5] = [
            ("Host", "a"),
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];

        fn request(order: &[usize], upper: &[bool], path: &str, extra: &[u8]) -> Vec<u8> {
            let mut text = format!("GET {path} HTTP/1.1\r\n");
            for (&index, &up) in order.iter().zip(upper) {
                let (name, value) = HEADERS[index];
                let name = if up { name.to_ascii_uppercase() } else { name.to_ascii_lowercase() };
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str("\r\n");
            let mut bytes = text.into_bytes();
            bytes.extend_from_slice(extra);
            bytes
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever arrives before the handshake, parsing never panics,
            /// and it answers "wait" only while no blank line ended a head.
            /// Inputs mix random bytes with pieces of real requests, so
            /// heads often complete.
            #[test]
            fn any_bytes_get_an_answer(
                pieces in proptest::collection::vec(
                    prop_oneof![
                        proptest::collection::vec(any::<u8>(), 0..12),
                        prop_oneof![
                            Just("GET "), Just("/x "), Just("HTTP/1.1"), Just("\r\n"), Just("\r\n\r\n"),
                            Just("Upgrade: websocket"), Just("Connection: Upgrade"), Just(":"), Just(" "),
                            Just("Sec-WebSocket-Version: 13"), Just("Sec-WebSocket-Key: x"),
                        ].prop_map(|s: &str| s.as_bytes().to_vec()),
                    ],
                    0..24,
                ),
            ) {
                let bytes = pieces.concat();
                let result = parse(&bytes, "peer");
                if matches!(result, Ok(None)) {
                    // Empty lines before the request line are skipped.
                    let start = bytes.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(bytes.len());
                    prop_assert!(
                        !bytes[start..].windows(4).any(|w| w == b"\r\n\r\n"),
                        "a complete head left waiting: {:?}", String::from_utf8_lossy(&bytes)
                    );
                }
            }

            /// A valid upgrade parses whatever the header order and case,
            /// every strict prefix of its head waits, and bytes after the
            /// head are kept for the WebSocket.
            #[test]
            fn valid_upgrades_parse_in_any_order_and_case(
                order in Just(vec![0usize, 1, 2, 3, 4]).prop_shuffle(),
                upper in proptest::collection::vec(any::<bool>(), 5),
                path in "/[a-z0-9]{0,12}(\\?[a-z]=[0-9]{1,3})?",
                extra in proptest::collection::vec(any::<u8>(), 0..20),
                cut in 0usize..200,
            ) {
                let bytes = request(&order, &upper, &path, &extra);
                let (upgrade, len) = parse(&bytes, "peer").expect("valid").expect("complete");
                prop_assert_eq!(&upgrade.request.path, &path);
                prop_assert_eq!(&bytes[len..], &extra[..]);
                let cut = cut.min(len - 1);
                prop_assert!(matches!(parse(&bytes[..cut], "peer"), Ok(None)));
            }

            /// Static files: whatever the request target, nothing outside
            /// the directory is ever served.
            #[test]
            fn static_files_never_escape(
                parts in proptest::collection::vec(
                    prop_oneof![Just(".."), Just("."), Just("sub"), Just("index.html"), Just("secret.txt"),
                                Just("%2e%2e"), Just(""), Just("link")],
                    0..6,
                ),
                query in proptest::option::of("[a-z=&]{0,8}"),
            ) {
                let (root, dir) = static_tree();
                let mut target = format!("/{}", parts.join("/"));
                if let Some(query) = query {
                    target.push('?');
                    target.push_str(&query);
                }
                let out = static_file(&dir, "GET", &target);
                let text = String::from_utf8_lossy(&out);
                prop_assert!(!text.contains("SECRET"), "{target} served a file outside the directory");
                prop_assert!(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 404"), "{}", text);
                let _ = root;
            }
        }

        /// `<tmp>/secret.txt` outside, `<tmp>/www/{index.html, sub/inner.txt,
        /// link -> ..}` inside; made once per process.
        fn static_tree() -> (std::path::PathBuf, std::path::PathBuf) {
            let root = std::env::temp_dir().join(format!("hotsock-static-prop-{}", std::process::id()));
            let dir = root.join("www");
            if !dir.join("sub/inner.txt").exists() {
                std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
                std::fs::write(root.join("secret.txt"), "SECRET").expect("write");
                std::fs::write(dir.join("index.html"), "<h1>hi</h1>").expect("write");
                std::fs::write(dir.join("sub/inner.txt"), "inner").expect("write");
                let _ = std::os::unix::fs::symlink("..", dir.join("link"));
            }
            (root, dir)
        }
    }
}
