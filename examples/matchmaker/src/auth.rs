//! Handshake parameters and the token check.
//!
//! A game backend that authenticated a player issues
//! `token = hex(HMAC-SHA256(MATCH_SECRET, decimal uid))` and hands the client
//! `ws://HOST/match?uid=U&gender=m|f&game=G&name=N&rating=R&token=T`.
//! The matchmaker shares only the secret with the backend.

use hmac::{Hmac, Mac};
use hotsock_worker::HandshakeRequest;
use sha2::Sha256;

/// What a player says about themselves at the handshake.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) uid: u64,
    pub(crate) gender: String,
    pub(crate) game: String,
    pub(crate) name: String,
    pub(crate) rating: i64,
}

/// Longest game id and display name, in bytes (the table's columns).
const GAME_MAX: usize = 32;
const NAME_MAX: usize = 32;

impl Params {
    /// Reads and checks the query; the error is the 400 body.
    pub(crate) fn parse(request: &HandshakeRequest) -> Result<Params, String> {
        let uid = request
            .query("uid")
            .ok_or("missing uid")?
            .parse::<u64>()
            .ok()
            .filter(|uid| *uid > 0)
            .ok_or("uid must be a positive integer")?;
        let gender = match request.query("gender").ok_or("missing gender")? {
            "m" | "f" => request.query("gender").unwrap_or_default().to_owned(),
            _ => return Err("gender must be m or f".into()),
        };
        let game = request.query("game").ok_or("missing game")?.to_owned();
        if game.is_empty() || game.len() > GAME_MAX || !game.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("game must be 1 to {GAME_MAX} letters, digits or dashes"));
        }
        let name = request.query("name").map(decode).unwrap_or_else(|| format!("player{uid}"));
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(format!("name must be 1 to {NAME_MAX} bytes"));
        }
        let rating = match request.query("rating") {
            Some(r) => r.parse::<i64>().map_err(|_| "rating must be an integer")?,
            None => 1000,
        };
        Ok(Params { uid, gender, game, name, rating })
    }
}

/// The token a backend issues for `uid`.
pub(crate) fn token(secret: &[u8], uid: u64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return String::new() };
    mac.update(uid.to_string().as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a token in constant time.
pub(crate) fn valid(secret: &[u8], uid: u64, token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(uid.to_string().as_bytes());
    let Some(bytes) = unhex(token) else { return false };
    mac.verify_slice(&bytes).is_ok()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// `%20` and `+` in a display name.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
