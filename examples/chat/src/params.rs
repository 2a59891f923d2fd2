//! What a client may ask for, checked: the room and nick of the upgrade
//! URL, the browser client's recovery positions, and chat messages. Pure
//! functions, so every refusal is unit-tested; nothing here touches the
//! server.

use hotsock_worker::{HandshakeRequest, Position};

/// Longest room name: rooms are typed into URLs and shown in the page.
pub(crate) const ROOM_BYTES_MAX: usize = 32;
/// Longest nick in characters (and it must fit the `chatters` table's
/// `str:64` column, which counts bytes: 24 characters of up to 2 bytes fit
/// comfortably, and a longer UTF-8 spelling is refused by the byte check).
pub(crate) const NICK_CHARS_MAX: usize = 24;
/// Bytes the `chatters.nick` column holds.
pub(crate) const NICK_BYTES_MAX: usize = 64;
/// Longest chat message in characters: a chat line, not a document; the
/// history keeps a few hundred of them per room.
pub(crate) const TEXT_CHARS_MAX: usize = 500;

/// A joining client's room and nick, and where it says it left off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Join {
    /// `[a-z0-9-]{1,32}`.
    pub(crate) room: String,
    /// Trimmed, 1 to [`NICK_CHARS_MAX`] letters, digits, spaces, `_-.`.
    pub(crate) nick: String,
    /// The position the URL carried for this room's channel, if any.
    pub(crate) since: Option<Position>,
}

/// What a room's channel name starts with.
pub(crate) const ROOM_PREFIX: &str = "room:";

/// The room's channel name.
pub(crate) fn channel(room: &str) -> String {
    format!("{ROOM_PREFIX}{room}")
}

impl Join {
    /// Reads `room`, `name` and `since` from the upgrade request; the error
    /// is the body of the 400 the client gets.
    pub(crate) fn parse(request: &HandshakeRequest) -> Result<Join, String> {
        let room = decoded(request, "room")?.ok_or("missing ?room=NAME")?;
        check_room(&room)?;
        let nick = decoded(request, "name")?.ok_or("missing &name=NICK")?;
        let nick = check_nick(&nick)?;
        let since = since(request.query("since").unwrap_or(""), &channel(&room))?;
        Ok(Join { room, nick, since })
    }
}

fn decoded(request: &HandshakeRequest, key: &str) -> Result<Option<String>, String> {
    match request.query(key) {
        None => Ok(None),
        Some(raw) => percent_decode(raw).map(Some).ok_or_else(|| format!("{key} is not valid percent-encoded UTF-8")),
    }
}

/// A room name: `[a-z0-9-]{1,32}`.
pub(crate) fn check_room(room: &str) -> Result<(), String> {
    let plain = room.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if room.is_empty() || room.len() > ROOM_BYTES_MAX || !plain {
        return Err(format!("room must be 1 to {ROOM_BYTES_MAX} of a-z, 0-9 and -"));
    }
    Ok(())
}

/// A nick, trimmed: letters, digits, spaces and `_-.`, 1 to
/// [`NICK_CHARS_MAX`] characters.
pub(crate) fn check_nick(nick: &str) -> Result<String, String> {
    let nick = nick.trim();
    let chars = nick.chars().count();
    let allowed = nick.chars().all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.'));
    if chars == 0 || chars > NICK_CHARS_MAX || nick.len() > NICK_BYTES_MAX || !allowed {
        return Err(format!("name must be 1 to {NICK_CHARS_MAX} letters, digits, spaces, _ - or ."));
    }
    Ok(nick.to_owned())
}

/// The position for `channel` in the browser client's `since` parameter
/// (`CHANNEL.EPOCH.OFFSET,...`, CHANNEL percent-encoded, entries split at
/// their last two dots: see clients/js/README.md). Entries for other
/// channels are ignored: a URL never chooses what a connection joins.
pub(crate) fn since(raw: &str, channel: &str) -> Result<Option<Position>, String> {
    for entry in raw.split(',').filter(|e| !e.is_empty()) {
        let bad = || format!("since entry {entry:?} is not CHANNEL.EPOCH.OFFSET");
        let (rest, offset) = entry.rsplit_once('.').ok_or_else(bad)?;
        let (name, epoch) = rest.rsplit_once('.').ok_or_else(bad)?;
        if percent_decode(name).as_deref() == Some(channel) {
            return Position::parse(epoch, offset).map(Some).ok_or_else(bad);
        }
    }
    Ok(None)
}

/// A chat message's text, trimmed: not empty, at most [`TEXT_CHARS_MAX`]
/// characters, no control characters but newlines. The error is what the
/// sender is told.
pub(crate) fn check_text(text: &str) -> Result<&str, String> {
    let text = text.trim();
    let chars = text.chars().count();
    if chars == 0 {
        return Err("empty message".into());
    }
    if chars > TEXT_CHARS_MAX {
        return Err(format!("message too long: {chars} characters, at most {TEXT_CHARS_MAX}"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err("control characters are not allowed".into());
    }
    Ok(text)
}

/// `%XX` escapes and `+` (a space, as forms write it) decoded; `None` for
/// a broken escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> HandshakeRequest {
        HandshakeRequest { peer: "127.0.0.1:1".into(), path: path.into(), headers: Vec::new() }
    }

    #[test]
    fn a_room_and_a_nick_join() {
        let join = Join::parse(&request("/?room=lobby&name=Ada%20L.")).expect("valid");
        assert_eq!(join, Join { room: "lobby".into(), nick: "Ada L.".into(), since: None });
        let join = Join::parse(&request("/?name=+Zoë+&room=r-2")).expect("valid");
        assert_eq!((join.room.as_str(), join.nick.as_str()), ("r-2", "Zoë"));
    }

    #[test]
    fn bad_rooms_and_nicks_are_refused_with_the_rule() {
        let long_room = "a".repeat(ROOM_BYTES_MAX + 1);
        for (path, why) in [
            ("/?name=Ada", "missing ?room"),
            ("/?room=lobby", "missing &name"),
            ("/?room=Lobby&name=Ada", "room must be"),
            ("/?room=a%2Fb&name=Ada", "room must be"),
            ("/?room=&name=Ada", "room must be"),
            (&format!("/?room={long_room}&name=Ada"), "room must be"),
            ("/?room=lobby&name=%20%20", "name must be"),
            ("/?room=lobby&name=%3Cscript%3E", "name must be"),
            ("/?room=lobby&name=aaaaaaaaaaaaaaaaaaaaaaaaa", "name must be"),
            ("/?room=lobby&name=%FF", "name is not valid"),
            ("/?room=lobby&name=%4", "name is not valid"),
        ] {
            let error = Join::parse(&request(path)).expect_err(path);
            assert!(error.contains(why), "{path}: {error}");
        }
    }

    #[test]
    fn since_finds_this_rooms_channel_only() {
        let epoch = "9f3a0c5e1b2d4f60";
        let raw = format!("room%3Aother.{epoch}.9,room%3Alobby.{epoch}.41");
        let position = since(&raw, "room:lobby").expect("valid").expect("present");
        assert_eq!((position.epoch_hex().as_str(), position.offset), (epoch, 41));
        assert_eq!(since(&raw, "room:third"), Ok(None));
        assert_eq!(since("", "room:lobby"), Ok(None));
        // A name with dots survives because entries split at their last two.
        let dotted = since(&format!("a.b.{epoch}.3"), "a.b").expect("valid").expect("present");
        assert_eq!(dotted.offset, 3);
        for bad in ["room%3Alobby", "room%3Alobby.zz.1", &format!("room%3Alobby.{epoch}.-1")] {
            assert!(since(bad, "room:lobby").is_err(), "{bad}");
        }
        let join = Join::parse(&request(&format!("/?room=lobby&name=A&since={raw}"))).expect("valid");
        assert_eq!(join.since.map(|p| p.offset), Some(41));
    }

    #[test]
    fn texts_are_bounded() {
        assert_eq!(check_text("  hi\n"), Ok("hi"));
        assert_eq!(check_text(&"é".repeat(TEXT_CHARS_MAX)).map(|t| t.chars().count()), Ok(TEXT_CHARS_MAX));
        let error = check_text(&"x".repeat(TEXT_CHARS_MAX + 1)).expect_err("long");
        assert_eq!(error, format!("message too long: {} characters, at most {TEXT_CHARS_MAX}", TEXT_CHARS_MAX + 1));
        assert!(check_text("   ").is_err());
        assert!(check_text("a\u{7}b").is_err());
    }
}
