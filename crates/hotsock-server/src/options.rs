//! What the program embedding the server (the `hotsock` binary) hands it
//! besides the config: the parts of its own set-up a reload may change.
//! A leaf: it imports nothing of the server.

/// The log's filter, which the binary installed and the server may change
/// when a reload re-reads `log.level`. The server checks the new filter
/// before anything of a reload is applied, then sets it with the rest.
pub trait LogControl: Send + Sync {
    /// Whether `filter` would work; why not, if not.
    fn check(&self, filter: &str) -> Result<(), String>;
    /// Installs `filter` (already checked).
    fn set(&self, filter: &str);
}

/// How `hotsock start` started the server, beyond the config file.
#[derive(Default)]
pub struct Options {
    /// `--watch`: watching stays on when a reload re-reads a file whose
    /// `[reload.watch]` leaves it off.
    pub watch: bool,
    /// The log filter's control, when the log can change (`log.level`).
    pub log: Option<Box<dyn LogControl>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options").field("watch", &self.watch).field("log", &self.log.is_some()).finish()
    }
}
