//! What the echo tests share: the echo example in each worker language, so
//! one test body runs against `examples/echo` (Rust) and
//! `examples/echo-php` (the PHP SDK), which behave the same.

use hotsock_testkit::{bin, php, repo_root};

/// Which implementation of the echo example serves a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EchoWorker {
    /// `examples/echo`, built by cargo.
    Rust,
    /// `examples/echo-php/worker.php` on the PHP CLI.
    Php,
}

impl EchoWorker {
    /// The `workers.command` TOML value that runs it.
    pub(crate) fn command(self) -> String {
        match self {
            EchoWorker::Rust => format!("[\"{}\"]", bin("echo").display()),
            EchoWorker::Php => {
                // Checked first, so a machine without PHP fails with the
                // command that installs it; the command names `php` bare so
                // the generation store has no executable of ours to copy.
                php();
                format!("[\"php\", \"{}\"]", repo_root().join("examples/echo-php/worker.php").display())
            }
        }
    }

    /// A `[workers]` section running it on `count` workers, then `extra`.
    pub(crate) fn config(self, count: usize, extra: &str) -> String {
        format!("[workers]\ncommand = {}\ncount = {count}\n{extra}", self.command())
    }
}

/// Runs one async test body, `fn(EchoWorker)`, once per worker language:
/// `name::rust` and `name::php` (declare `#[macro_use] mod common;`).
macro_rules! each_echo_worker {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test(flavor = "multi_thread")]
            async fn rust() {
                super::$body(crate::common::EchoWorker::Rust).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn php() {
                super::$body(crate::common::EchoWorker::Php).await
            }
        }
    )*};
}
