//! What the echo tests share: the echo example in each worker language, so
//! one test body (`each_sdk!`) runs against `examples/echo` (Rust) and
//! `examples/echo-php` (the PHP SDK), which behave the same. Declare
//! `#[macro_use] mod each_sdk;` before `mod common;`.

/// Which implementation of the echo example serves a test.
pub(crate) use crate::each_sdk::Sdk as EchoWorker;

impl EchoWorker {
    /// A `[workers]` section running it on `count` workers, then `extra`.
    pub(crate) fn config(self, count: usize, extra: &str) -> String {
        let command = self.command("echo", "examples/echo-php/worker.php");
        format!("[workers]\ncommand = {command}\ncount = {count}\n{extra}")
    }
}
