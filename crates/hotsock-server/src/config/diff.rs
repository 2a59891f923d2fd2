//! What a reload may change: the old and the new config compared key by
//! key. A key is *live* when the running server can take its new value
//! (connections accepted from then on, workers started from then on, the
//! supervisor's next decision), or *restart-only* when the value is built
//! into something that lives as long as the process (a bound socket, the
//! run directory, the shared tables, the hub's slot vector).
//!
//! Pure: two parsed configs in, a verdict out; no I/O. Every field of every
//! section is named below, so a new key does not compile until it is
//! classified (a new section must be added to [`diff`] the same way).

use super::{ChannelsConfig, Config, LimitsConfig, LogConfig, ReloadConfig, ServerConfig, WorkersConfig, find_line};

/// A changed key that needs a restart, and its line in the new file (or in
/// the old one, when the new file no longer sets it: see `key_line`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestartOnly {
    pub(crate) key: String,
    pub(crate) line: Option<usize>,
}

/// The live keys that changed, in file order of sections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LiveChanges {
    pub(crate) keys: Vec<String>,
}

impl LiveChanges {
    /// Whether `key` (or a key under it, for a section) changed.
    pub(crate) fn touches(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key || k.strip_prefix(key).is_some_and(|rest| rest.starts_with('.')))
    }
}

/// Whether each key is live or needs a restart.
#[derive(Clone, Copy)]
enum Kind {
    Live,
    Restart,
}

struct Verdict<'a> {
    old: &'a Config,
    new: &'a Config,
    live: Vec<String>,
    restart: Vec<RestartOnly>,
}

impl Verdict<'_> {
    fn note(&mut self, kind: Kind, key: String, changed: bool) {
        if !changed {
            return;
        }
        match kind {
            Kind::Live => self.live.push(key),
            Kind::Restart => {
                let line = key_line(&self.new.source.text, &self.old.source.text, &key);
                self.restart.push(RestartOnly { key, line });
            }
        }
    }
}

/// Compares `section.field` of both configs for each field listed; the
/// destructuring makes the list exhaustive.
macro_rules! section {
    ($verdict:ident, $section:ident: $ty:ident { $($field:ident: $kind:ident),* $(,)? }) => {{
        let $ty { $($field: _),* } = &$verdict.new.$section;
        $(
            let changed = $verdict.old.$section.$field != $verdict.new.$section.$field;
            $verdict.note(Kind::$kind, concat!(stringify!($section), ".", stringify!($field)).to_owned(), changed);
        )*
    }};
}

/// What changing `old` into `new` does: the live keys that changed, or
/// every changed key that needs a restart (then nothing may change).
pub(crate) fn diff(old: &Config, new: &Config) -> Result<LiveChanges, Vec<RestartOnly>> {
    let mut v = Verdict { old, new, live: Vec::new(), restart: Vec::new() };
    // A new top-level section fails to compile here until it is classified.
    let Config {
        server: _,
        workers: _,
        limits: _,
        reload: _,
        log: _,
        metrics: _,
        tables: _,
        channels: _,
        cluster: _,
        base_dir: _,
        source: _,
    } = new;
    // The listener, the run directory (admin socket, generations) and the
    // connection semaphore are made once, at bind. Whether connections are
    // TLS at all changes what clients must speak: a restart; the files of
    // an existing `[server.tls]` are read again at every reload.
    section!(v, server: ServerConfig {
        listen: Restart,
        run_dir: Restart,
        backlog: Restart,
        max_connections: Restart,
        handshake_timeout_ms: Live,
        close_timeout_ms: Live,
        static_dir: Live,
        static_files: Live,
        stop_timeout_ms: Live,
        allowed_origins: Live,
        tls: Live,
        threads: Restart,
    });
    if let Some(position) = v.live.iter().position(|k| k == "server.tls")
        && old.server.tls.is_some() != new.server.tls.is_some()
    {
        v.live.remove(position);
        v.note(Kind::Restart, "server.tls".into(), true);
    }
    // A program given as a path is copied into the generation store, a
    // bare name found in PATH is not: switching between the two would make
    // the stored generations unfindable.
    let copied = |config: &Config| config.workers.command.first().is_some_and(|program| program.contains('/'));
    v.note(Kind::Restart, "workers.command".into(), copied(old) != copied(new));
    // The hub's slot vector (event slots, then task slots) and the slots'
    // strike limit are fixed for the process: the slots hold the events in
    // flight and their lanes, and task slots are numbered after the event
    // slots, so changing either count would renumber slots under events
    // that are running. The dispatch mode is the hub's own routing rule.
    section!(v, workers: WorkersConfig {
        command: Live,
        count: Restart,
        dispatch: Restart,
        max_concurrency: Live,
        threads: Live,
        heartbeat_ms: Live,
        unresponsive_ms: Live,
        task_unresponsive_ms: Live,
        task_count: Restart,
        task_queue_max: Live,
        task_max_requests: Live,
        max_requests: Live,
        max_redeliveries: Restart,
        restart_backoff_max_ms: Live,
        start_idle_ms: Live,
        crash_loop_count: Live,
        crash_loop_window_ms: Live,
    });
    section!(v, limits: LimitsConfig {
        max_message_bytes: Live,
        output_buffer_bytes: Live,
        max_inflight_per_conn: Live,
        max_request_head_bytes: Live,
        read_buffer_bytes: Live,
        max_connections_per_ip: Live,
        handshakes_per_ip_per_s: Live,
    });
    section!(v, reload: ReloadConfig {
        strategy: Live,
        keep_generations: Live,
        ready_timeout_ms: Live,
        canary_ms: Live,
        handoff_timeout_ms: Live,
        handoff_max_bytes: Live,
        rollback_window_ms: Live,
        rollback_failures: Live,
        max_wait_ms: Live,
        upgrade_timeout_ms: Live,
        upgrade_pause_max_ms: Live,
        watch: Live,
    });
    // Channel limits apply to the next request (a lowered history bound
    // trims at the channel's next publication or sweep). The envelope is
    // what connected clients parse: switching it under them is a restart.
    section!(v, channels: ChannelsConfig {
        history_size: Live,
        history_max_bytes: Live,
        history_ttl_ms: Live,
        max_channels: Live,
        max_members: Live,
        max_channels_per_conn: Live,
        max_replay: Live,
        envelope: Restart,
    });
    // The log's writer (stderr or a file) and its format are set up once by
    // the binary; the filter is behind a reload handle.
    section!(v, log: LogConfig { format: Restart, file: Restart, level: Live });
    // The node registers once, under one id, with one Redis: joining
    // another cluster or renaming the node under live connections would
    // orphan their presence and channel state.
    v.note(Kind::Restart, "cluster".into(), old.cluster != new.cluster);
    // The metrics listener is bound at start, like the client listener.
    v.note(Kind::Restart, "metrics.listen".into(), old.metrics != new.metrics);
    // Tables are created before the first worker and shared by every one;
    // a new schema cannot be applied to the segments workers have mapped.
    let names = old.tables.keys().chain(new.tables.keys().filter(|name| !old.tables.contains_key(*name)));
    for name in names {
        let changed = old.tables.get(name) != new.tables.get(name);
        v.note(Kind::Restart, format!("tables.{name}"), changed);
    }
    if v.restart.is_empty() { Ok(LiveChanges { keys: v.live }) } else { Err(v.restart) }
}

/// The line of `key` in the new file or, when the new file no longer sets
/// it, in the old one: its `key = ...` line, else the header of the
/// section it names (`[tables.players]`, `[server.tls]`), else the header
/// of the section it sits in.
fn key_line(new: &str, old: &str, key: &str) -> Option<usize> {
    let parent = key.rsplit_once('.').map_or(key, |(section, _)| section);
    find_line(new, key)
        .or_else(|| find_line(old, key))
        .or_else(|| header_line(new, key))
        .or_else(|| header_line(old, key))
        .or_else(|| header_line(new, parent))
}

/// The line of the `[section]` header.
fn header_line(text: &str, section: &str) -> Option<usize> {
    let is_header = |line: &str| {
        let line = line.trim();
        line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).map(str::trim) == Some(section)
    };
    text.lines().position(is_header).map(|index| index + 1)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:9501\"\n\n[workers]\ncommand = [\"w\"]\ncount = 2\n";

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("dir/hotsock.toml"), text).expect("valid config")
    }

    fn keys(restart: &[RestartOnly]) -> Vec<(&str, Option<usize>)> {
        restart.iter().map(|r| (r.key.as_str(), r.line)).collect()
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert_eq!(diff(&parse(BASE), &parse(BASE)), Ok(LiveChanges::default()));
    }

    #[test]
    fn live_keys_are_listed() {
        let new = format!(
            "{BASE}max_requests = 5\n[limits]\nmax_connections_per_ip = 3\n[server.tls]\ncert = \"c\"\nkey = \"k\"\n"
        )
        .replace(
            "listen = \"127.0.0.1:9501\"",
            "listen = \"127.0.0.1:9501\"\nallowed_origins = [\"https://a.example\"]",
        );
        let old = format!("{BASE}[server.tls]\ncert = \"old\"\nkey = \"k\"\n");
        let changes = diff(&parse(&old), &parse(&new)).expect("all live");
        assert_eq!(
            changes.keys,
            ["server.allowed_origins", "server.tls", "workers.max_requests", "limits.max_connections_per_ip"]
        );
        assert!(changes.touches("limits") && changes.touches("server.tls") && !changes.touches("log"));
    }

    #[test]
    fn channel_limits_are_live_and_the_envelope_is_not() {
        let new = format!("{BASE}[channels]\nmax_members = 10\nhistory_size = 5\n");
        let changes = diff(&parse(BASE), &parse(&new)).expect("live");
        assert_eq!(changes.keys, ["channels.history_size", "channels.max_members"]);
        let new = format!("{BASE}[channels]\nenvelope = \"json\"\n");
        let restart = diff(&parse(BASE), &parse(&new)).expect_err("clients parse the envelope");
        assert_eq!(keys(&restart), [("channels.envelope", Some(8))]);
    }

    #[test]
    fn joining_or_changing_a_cluster_needs_a_restart() {
        let joined = format!("{BASE}[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\n");
        let restart = diff(&parse(BASE), &parse(&joined)).expect_err("joining is a restart");
        assert_eq!(keys(&restart), [("cluster", Some(7))]);
        let renamed = format!("{joined}node_id = \"b\"\n");
        let restart = diff(&parse(&joined), &parse(&renamed)).expect_err("renaming is a restart");
        assert_eq!(keys(&restart)[0].0, "cluster");
        assert!(diff(&parse(&joined), &parse(&joined)).is_ok());
    }

    #[test]
    fn restart_only_keys_are_named_with_their_line_and_nothing_is_live() {
        let new = BASE.replace("9501", "9502").replace("count = 2", "count = 3\nmax_requests = 5");
        let restart = diff(&parse(BASE), &parse(&new)).expect_err("needs a restart");
        assert_eq!(keys(&restart), [("server.listen", Some(2)), ("workers.count", Some(6))]);
    }

    #[test]
    fn a_key_removed_from_the_file_is_named_with_its_old_line() {
        let old = BASE.replace("count = 2", "count = 2\ndispatch = \"uid\"");
        let restart = diff(&parse(&old), &parse(BASE)).expect_err("dispatch back to its default");
        assert_eq!(keys(&restart), [("workers.dispatch", Some(7))]);
    }

    #[test]
    fn tables_metrics_log_file_and_tls_on_or_off_need_a_restart() {
        let table = "[tables.players]\nrows = 10\ncolumns = { score = \"i64\" }\n";
        let old = format!("{BASE}{table}");
        let new = format!(
            "{BASE}{}[metrics]\nlisten = \"127.0.0.1:9100\"\n[log]\nfile = \"x.log\"\nlevel = \"debug\"\n[server.tls]\ncert = \"c\"\nkey = \"k\"\n",
            table.replace("rows = 10", "rows = 20")
        );
        let restart = diff(&parse(&old), &parse(&new)).expect_err("restart");
        assert_eq!(
            keys(&restart),
            [
                ("server.tls", Some(15)),
                ("log.file", Some(13)),
                ("metrics.listen", Some(11)),
                ("tables.players", Some(7))
            ]
        );
        let gone = diff(&parse(&old), &parse(BASE)).expect_err("a table removed");
        assert_eq!(keys(&gone), [("tables.players", Some(7))]);
    }

    #[test]
    fn the_log_level_is_live_its_format_is_not() {
        let level = diff(&parse(BASE), &parse(&format!("{BASE}[log]\nlevel = \"debug\"\n"))).expect("live");
        assert_eq!(level.keys, ["log.level"]);
        let format = diff(&parse(BASE), &parse(&format!("{BASE}[log]\nformat = \"json\"\n"))).expect_err("restart");
        assert_eq!(keys(&format), [("log.format", Some(8))]);
    }
}
