//! Who may open a WebSocket, decided before any worker sees the request:
//! the Origin allow-list (against cross-site WebSocket hijacking: a page on
//! another site opening a socket with the user's cookies) and the per-IP
//! limits (connections held at once, handshakes per second). Pure
//! decisions: the clock is passed in, nothing here does I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use crate::metrics::Refused;

/// One entry of `server.allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginPattern {
    /// `https://app.example.com` (scheme, host and port as the browser
    /// sends them; compared without case).
    Exact(String),
    /// `*.example.com`: any scheme and port, any host under example.com
    /// (not example.com itself).
    Subdomains(String),
}

impl OriginPattern {
    /// Parses one configured pattern, or says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<OriginPattern, String> {
        let text = text.trim().to_ascii_lowercase();
        if let Some(domain) = text.strip_prefix("*.") {
            if domain.is_empty() || domain.contains(['/', ':', '*']) {
                return Err(format!("{text:?}: after \"*.\" comes a domain, like \"*.example.com\""));
            }
            return Ok(OriginPattern::Subdomains(domain.to_owned()));
        }
        match text.split_once("://") {
            Some((scheme, host)) if !scheme.is_empty() && !host.is_empty() && !host.contains(['/', '*']) => {
                Ok(OriginPattern::Exact(text))
            }
            _ => Err(format!(
                "{text:?} is not an origin: write \"https://app.example.com\" (scheme://host[:port]) or \"*.example.com\""
            )),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(exact) => origin == exact,
            OriginPattern::Subdomains(domain) => {
                let rest = origin.split_once("://").map_or(origin, |(_, rest)| rest);
                let host = match rest.rsplit_once(':') {
                    Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
                    _ => rest,
                };
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
        }
    }
}

/// Whether a request's `Origin` header is allowed. No list: any. A request
/// without an Origin header is not from a browser page (browsers always
/// send one with a WebSocket upgrade), so the list does not apply to it.
pub(crate) fn origin_allowed(allowed: Option<&[OriginPattern]>, origin: Option<&[u8]>) -> bool {
    let (Some(allowed), Some(origin)) = (allowed, origin) else { return true };
    let Ok(origin) = std::str::from_utf8(origin) else { return false };
    let origin = origin.trim().to_ascii_lowercase();
    allowed.iter().any(|pattern| pattern.matches(&origin))
}

/// One client address's use.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Connections it holds (open or mid-handshake).
    connections: u32,
    /// Handshake tokens left (a token bucket refilled at the rate).
    tokens: f64,
    refilled: Instant,
}

/// The per-IP limits and what each address uses now.
#[derive(Debug)]
pub(crate) struct PerIp {
    /// `limits.max_connections_per_ip` (0: no cap). A reload may change
    /// both limits (`set_limits`).
    max_connections: AtomicU32,
    /// `limits.handshakes_per_ip_per_s` (0: no limit); also the burst.
    handshakes_per_s: AtomicU32,
    usage: Mutex<Book>,
}

/// The addresses in use, and when to sweep out the idle ones.
#[derive(Debug)]
struct Book {
    by_ip: HashMap<IpAddr, Usage>,
    /// Sweep when the map reaches this size; after a sweep, twice what is
    /// left (so sweeping costs O(1) per admission, amortised).
    sweep_at: usize,
}

/// The smallest map that gets swept: below it, idle entries cost nothing
/// worth a pass.
const SWEEP_MIN: usize = 1024;

/// A connection an address holds; give it back with [`PerIp::release`].
#[derive(Debug)]
#[must_use]
pub(crate) struct Held {
    ip: IpAddr,
    /// Counted in the book (limits were on when it was admitted): only
    /// those are given back, whatever the limits are by then.
    tracked: bool,
}

impl PerIp {
    pub(crate) fn new(max_connections: u32, handshakes_per_s: u32) -> PerIp {
        let book = Book { by_ip: HashMap::new(), sweep_at: SWEEP_MIN };
        PerIp {
            max_connections: AtomicU32::new(max_connections),
            handshakes_per_s: AtomicU32::new(handshakes_per_s),
            usage: Mutex::new(book),
        }
    }

    /// New limits from a reload. Connections admitted while both limits
    /// were off were not counted, so a cap turned on later counts only the
    /// connections opened from then on.
    pub(crate) fn set_limits(&self, max_connections: u32, handshakes_per_s: u32) {
        self.max_connections.store(max_connections, Ordering::Relaxed);
        self.handshakes_per_s.store(handshakes_per_s, Ordering::Relaxed);
    }

    /// Admits one more connection from `ip` at `now`, or says why not.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> Result<Held, Refused> {
        let max_connections = self.max_connections.load(Ordering::Relaxed);
        let rate = f64::from(self.handshakes_per_s.load(Ordering::Relaxed));
        if max_connections == 0 && rate == 0.0 {
            return Ok(Held { ip, tracked: false });
        }
        let full = |usage: &Usage, now: Instant| full(rate, usage, now);
        let mut book = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        // Addresses that hold nothing and whose bucket is full again (even
        // refused ones, which never come back through `release`) go, so the
        // map holds only addresses in use or limited within the last second.
        if book.by_ip.len() >= book.sweep_at {
            book.by_ip.retain(|_, u| u.connections > 0 || !full(u, now));
            book.sweep_at = (2 * book.by_ip.len()).max(SWEEP_MIN);
        }
        let entry = book.by_ip.entry(ip).or_insert(Usage { connections: 0, tokens: rate, refilled: now });
        if rate > 0.0 {
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * rate).min(rate);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                return Err(Refused::RateLimited);
            }
        }
        if max_connections > 0 && entry.connections >= max_connections {
            return Err(Refused::PerIpCap);
        }
        entry.tokens -= 1.0;
        entry.connections += 1;
        Ok(Held { ip, tracked: true })
    }

    /// A connection an upgrade moved here: counted like one admitted here,
    /// past the limits (it was admitted once already).
    pub(crate) fn adopt(&self, ip: IpAddr, now: Instant) -> Held {
        let rate = f64::from(self.handshakes_per_s.load(Ordering::Relaxed));
        let mut book = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        book.by_ip.entry(ip).or_insert(Usage { connections: 0, tokens: rate, refilled: now }).connections += 1;
        Held { ip, tracked: true }
    }

    /// A connection from this address ended. An address that holds none
    /// and whose bucket would be full again is forgotten at once.
    pub(crate) fn release(&self, held: Held, now: Instant) {
        if !held.tracked {
            return;
        }
        let rate = f64::from(self.handshakes_per_s.load(Ordering::Relaxed));
        let mut book = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let idle = match book.by_ip.get_mut(&held.ip) {
            Some(entry) => {
                entry.connections = entry.connections.saturating_sub(1);
                entry.connections == 0 && full(rate, entry, now)
            }
            None => false,
        };
        if idle {
            book.by_ip.remove(&held.ip);
        }
    }

    /// Addresses tracked now (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.usage.lock().map(|u| u.by_ip.len()).unwrap_or(0)
    }
}

/// Whether an address's bucket is (or would by `now` be) full at `rate`.
fn full(rate: f64, usage: &Usage, now: Instant) -> bool {
    rate == 0.0 || usage.tokens + now.saturating_duration_since(usage.refilled).as_secs_f64() * rate >= rate
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn patterns(list: &[&str]) -> Vec<OriginPattern> {
        list.iter().map(|p| OriginPattern::parse(p).expect("pattern")).collect()
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let allowed = patterns(&["https://app.example.com", "*.example.org"]);
        let ok = |origin: &str| origin_allowed(Some(&allowed), Some(origin.as_bytes()));
        assert!(ok("https://app.example.com"));
        assert!(ok("HTTPS://App.Example.com"), "origins compare without case");
        assert!(!ok("http://app.example.com"), "the scheme is part of an exact origin");
        assert!(!ok("https://app.example.com:8443"));
        assert!(!ok("https://evil.com"));
        assert!(ok("https://a.example.org") && ok("http://b.c.example.org:8080"));
        assert!(!ok("https://example.org"), "*. means a subdomain");
        assert!(!ok("https://badexample.org"));
        assert!(!ok("https://example.org.evil.com"));
        assert!(origin_allowed(Some(&allowed), None), "no Origin: not a browser page");
        assert!(origin_allowed(None, Some(b"https://any.where")), "no list: any origin");
        assert!(!origin_allowed(Some(&allowed), Some(&[0xff, 0xfe])));
    }

    #[test]
    fn bad_patterns_say_what_to_write() {
        for bad in ["example.com", "*.", "https://", "*.a/b", "https://*.x.com"] {
            let error = OriginPattern::parse(bad).expect_err(bad);
            assert!(error.contains("example.com"), "{error}");
        }
    }

    #[test]
    fn the_cap_counts_connections_held_and_frees_them() {
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        let now = Instant::now();
        let limits = PerIp::new(2, 0);
        let a = limits.admit(ip, now).expect("1st");
        let _b = limits.admit(ip, now).expect("2nd");
        assert_eq!(limits.admit(ip, now).map(|_| ()), Err(Refused::PerIpCap));
        let _c = limits.admit(other, now).expect("another address is counted apart");
        limits.release(a, now);
        let _d = limits.admit(ip, now).expect("room again");
    }

    #[test]
    fn limits_changed_by_a_reload_apply_to_new_connections_and_releases_stay_exact() {
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        let now = Instant::now();
        let limits = PerIp::new(0, 0);
        let before = limits.admit(ip, now).expect("no limits");
        limits.set_limits(1, 0);
        let first = limits.admit(ip, now).expect("the one counted");
        assert_eq!(limits.admit(ip, now).map(|_| ()), Err(Refused::PerIpCap), "opened before the cap: not counted");
        // Turned off and on again: the counted connection is still given back.
        limits.set_limits(0, 0);
        limits.release(first, now);
        limits.release(before, now);
        limits.set_limits(1, 0);
        let again = limits.admit(ip, now).expect("nothing stale left behind");
        limits.release(again, now);
        assert_eq!(limits.tracked(), 0);
    }

    #[test]
    fn refused_addresses_do_not_pile_up() {
        let now = Instant::now();
        let limits = PerIp::new(0, 1);
        // Many addresses each connect once and are then refused once.
        for n in 0..5000u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            let held = limits.admit(ip, now).expect("first");
            assert!(limits.admit(ip, now).is_err(), "second within the second");
            limits.release(held, now);
        }
        // Two seconds on, their buckets are full again: the sweep that the
        // growing map triggers removes all 5000 (while newer ones, limited
        // within the last second, stay).
        let later = now + Duration::from_secs(2);
        for n in 0..4000u32 {
            let ip = IpAddr::from((n + 100_000).to_be_bytes());
            let _ = limits.admit(ip, later).map(|h| limits.release(h, later));
        }
        assert!(limits.tracked() <= 4000, "the old addresses were swept: {}", limits.tracked());
    }

    #[test]
    fn the_rate_limit_refills_over_time() {
        let ip: IpAddr = "::1".parse().expect("ip");
        let now = Instant::now();
        let limits = PerIp::new(0, 5);
        let held: Vec<Held> = (0..5).map(|_| limits.admit(ip, now).expect("burst")).collect();
        assert_eq!(limits.admit(ip, now).map(|_| ()), Err(Refused::RateLimited));
        assert!(limits.admit(ip, now + Duration::from_millis(199)).is_err());
        let later = now + Duration::from_millis(201);
        let one = limits.admit(ip, later).expect("one token after 200 ms at 5/s");
        for h in held.into_iter().chain([one]) {
            limits.release(h, later);
        }
        assert_eq!(limits.tracked(), 1, "tokens not full yet: still tracked");
        let again = limits.admit(ip, later + Duration::from_secs(2)).expect("refilled");
        limits.release(again, later + Duration::from_secs(3));
        assert_eq!(limits.tracked(), 0, "idle and full again: forgotten");
    }
}
