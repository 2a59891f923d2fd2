//! One test body for both worker SDKs: `each_sdk!(name)` makes
//! `name::rust` and `name::php` of an `async fn name(sdk: Sdk)`, and each
//! test file maps `Sdk` to its own worker command (the test worker, the
//! matchmaker, ...). Declare `#[macro_use] mod each_sdk;`.

/// Which SDK's worker serves a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sdk {
    /// `crates/hotsock-worker`, a cargo-built binary.
    Rust,
    /// `sdk/php`, a script on the PHP CLI.
    Php,
}

impl Sdk {
    /// `workers.command` for a cargo-built binary or a PHP script (PHP is
    /// checked first, so a machine without it fails with the install
    /// command; `php` stays bare so the generation store copies nothing
    /// of ours).
    pub(crate) fn command(self, binary: &str, script: &str) -> String {
        match self {
            Sdk::Rust => format!("[\"{}\"]", hotsock_testkit::bin(binary).display()),
            Sdk::Php => {
                hotsock_testkit::php();
                format!("[\"php\", \"{}\"]", hotsock_testkit::repo_root().join(script).display())
            }
        }
    }
}

macro_rules! each_sdk {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test(flavor = "multi_thread")]
            async fn rust() {
                super::$body(crate::each_sdk::Sdk::Rust).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn php() {
                super::$body(crate::each_sdk::Sdk::Php).await
            }
        }
    )*};
}
