//! The server's log: text or JSON lines, to stderr or to `log.file`, which
//! SIGHUP reopens (after logrotate moved it, the next line goes to a fresh
//! file at the same path). Only `hotsock start` sets this up.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hotsock_server::{Config, LogFormat};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The log file, shared by every event's writer; reopened in place.
#[derive(Debug, Clone)]
pub(crate) struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<LogFile> {
        let file = open_append(path)?;
        Ok(LogFile { path: path.to_owned(), file: Arc::new(Mutex::new(file)) })
    }

    /// Opens the path again (SIGHUP): lines from now on go to the file now
    /// there, created if it was moved away.
    pub(crate) fn reopen(&self) -> io::Result<()> {
        let fresh = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Where it writes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// One event's writer: the formatter writes a whole line at once.
#[derive(Debug)]
pub(crate) struct LogLine(Arc<Mutex<File>>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(self.file.clone())
    }
}

/// The log filter, which a reload may change (`log.level`) unless
/// `HOTSOCK_LOG` overrides the file.
pub(crate) struct LogLevel {
    reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
    /// Set by HOTSOCK_LOG: the file's level is checked but not applied.
    overridden: bool,
}

/// Parses `log.level`; the error says what to write.
fn level_filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|error| {
        format!("`log.level` = {level:?} is not a filter ({error}; try \"info\" or \"info,hotsock_server=debug\")")
    })
}

impl hotsock_server::LogControl for LogLevel {
    fn check(&self, filter: &str) -> Result<(), String> {
        level_filter(filter).map(|_| ())
    }

    fn set(&self, filter: &str) {
        if self.overridden {
            tracing::info!("log.level changed to {filter:?}, but HOTSOCK_LOG overrides it");
            return;
        }
        match level_filter(filter).and_then(|filter| (self.reload)(filter)) {
            Ok(()) => tracing::info!("log.level is now {filter:?}"),
            Err(error) => tracing::error!("cannot change the log filter: {error}"),
        }
    }
}

/// Installs the log the config asks for; returns the file to reopen on
/// SIGHUP, if it writes to one, and the filter's control.
pub(crate) fn init(config: &Config) -> Result<(Option<LogFile>, LogLevel)> {
    let overridden = std::env::var("HOTSOCK_LOG").ok();
    let filter = match &overridden {
        Some(level) => EnvFilter::try_new(level).with_context(|| format!("HOTSOCK_LOG = {level:?} is not a filter"))?,
        None => level_filter(&config.log.level).map_err(anyhow::Error::msg)?,
    };
    let file = match config.log_file() {
        Some(path) => Some(LogFile::open(&path).with_context(|| format!("cannot open `log.file` {}", path.display()))?),
        None => None,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // Each writer and format is its own subscriber type, and so is its
    // filter's reload handle: each branch boxes its handle into `reload`.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()))
        }};
    }
    let reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync> = match (&file, config.log.format) {
        (Some(file), LogFormat::Text) => install!(builder.with_ansi(false).with_writer(file.clone())),
        (Some(file), LogFormat::Json) => install!(builder.json().with_writer(file.clone())),
        (None, LogFormat::Text) => {
            install!(
                builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_writer(std::io::stderr)
            )
        }
        (None, LogFormat::Json) => install!(builder.json().with_writer(std::io::stderr)),
    };
    Ok((file, LogLevel { reload, overridden: overridden.is_some() }))
}

/// Reopens the log file on every SIGHUP until the process ends. Without a
/// file, SIGHUP is logged and otherwise ignored (its default would kill
/// the server).
pub(crate) async fn reopen_on_sighup(file: Option<LogFile>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install a SIGHUP handler; the log file cannot be reopened");
        return;
    };
    while hangup.recv().await.is_some() {
        match &file {
            Some(file) => match file.reopen() {
                Ok(()) => tracing::info!(file = %file.path().display(), "SIGHUP: log file reopened"),
                Err(error) => {
                    tracing::error!(file = %file.path().display(), %error, "SIGHUP: cannot reopen the log file; still writing to the old one")
                }
            },
            None => tracing::info!("SIGHUP: no log.file to reopen"),
        }
    }
}
