//! What the tests need besides cargo, and how to get it. `bash .ci/run`
//! installs all of it once; after that plain `cargo test` works. When
//! something is missing, the test that needs it fails with one line naming
//! it and the command that provides it, instead of a bare "No such file".

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The crates every worker binary is built from, besides its own (the
/// server's are listed with it in `BIN_SOURCES`).
const WORKER_SOURCES: &[&str] = &["crates/hotsock-worker", "crates/hotsock-protocol", "crates/hotsock-table"];

/// The package directory of each workspace binary the tests start, so a
/// binary older than its sources is caught (cargo test rebuilds only the
/// binaries of the package under test, not the examples' or the test
/// worker's).
const BIN_SOURCES: &[(&str, &str)] = &[
    ("hotsock", "crates/hotsock"),
    ("hotsock", "crates/hotsock-server"),
    ("hotsock", "crates/hotsock-protocol"),
    ("hotsock", "crates/hotsock-table"),
    ("hotsock-testworker", "crates/hotsock-testkit"),
    ("echo", "examples/echo"),
    ("matchmaker", "examples/matchmaker"),
    ("tasks", "examples/tasks"),
    ("chat", "examples/chat"),
];

/// What of a package goes into its binary: its sources, the files it
/// includes, its manifest. Tests, benches and docs do not (editing a test
/// does not make cargo relink the binary, so they must not count).
const BUILD_INPUTS: &[&str] = &["src", "templates", "Cargo.toml"];

fn missing(what: &str, how: &str) -> ! {
    panic!("missing {what}: {how}")
}

/// Checks that a workspace binary exists and is not older than its
/// sources; `path` is where the test expects it.
pub(crate) fn built_binary(name: &str, path: &Path) {
    let build = "run `cargo build --workspace --bins` (bash .ci/run does)";
    let Ok(built) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        missing(&format!("{} (not built)", path.display()), build)
    };
    let packages: Vec<&str> = BIN_SOURCES.iter().filter(|(bin, _)| *bin == name).map(|(_, dir)| *dir).collect();
    if packages.is_empty() {
        return;
    }
    let root = crate::repo_root();
    // The server does not link the worker SDK: only worker binaries count it.
    let sdk = if name == "hotsock" { &[][..] } else { WORKER_SOURCES };
    let newest = packages
        .into_iter()
        .chain(sdk.iter().copied())
        .flat_map(|dir| BUILD_INPUTS.iter().map(|input| root.join(dir).join(input)).collect::<Vec<_>>())
        .filter_map(|path| newest_source(&path))
        .max_by_key(|(time, _)| *time);
    if let Some((time, source)) = newest
        && time > built
    {
        missing(&format!("an up-to-date {} (older than {})", path.display(), source.display()), build)
    }
}

/// The most recently modified file at or under `path`.
fn newest_source(path: &Path) -> Option<(SystemTime, PathBuf)> {
    if path.is_file() {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        return Some((modified, path.to_path_buf()));
    }
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else {
                let Ok(modified) = meta.modified() else { continue };
                if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
                    newest = Some((modified, path));
                }
            }
        }
    }
    newest
}

/// The Python of the test venv, with `websockets`.
pub fn python() -> PathBuf {
    let python = crate::repo_root().join("target/venv/bin/python");
    if !python.exists() {
        missing(
            "target/venv (Python with websockets)",
            "`python3 -m venv target/venv && target/venv/bin/pip install websockets==17.4` (bash .ci/run does)",
        );
    }
    python
}

/// `node` on PATH, with `tests/node/node_modules` installed.
pub fn node() -> PathBuf {
    let Some(node) = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("node")).find(|p| p.is_file()))
    else {
        missing("node on PATH", "install Node.js 20 with npm (Debian: `apt-get install nodejs npm`)")
    };
    if !crate::repo_root().join("tests/node/node_modules").is_dir() {
        missing("tests/node/node_modules", "run `npm ci` in tests/node (bash .ci/run does)");
    }
    node
}

/// Debian's Chromium, which the page test drives headless (`CHROMIUM`
/// names another build).
pub fn chromium() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        missing(&chromium.display().to_string(), "`apt-get install chromium` as root (bash .ci/run does)");
    }
    chromium
}

/// Prometheus's `promtool`, which validates `/metrics` (Debian's
/// `prometheus` package).
pub fn promtool() -> PathBuf {
    let promtool = PathBuf::from("/usr/bin/promtool");
    if !promtool.exists() {
        missing("/usr/bin/promtool", "`apt-get install prometheus` as root (bash .ci/run does)");
    }
    promtool
}

/// `php` on PATH: the PHP 8.2 CLI that runs `sdk/php` workers (Debian's
/// `php8.2-cli`, which bundles the `sockets` and `pcntl` extensions the SDK
/// uses).
pub fn php() -> PathBuf {
    let Some(php) = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("php")).find(|p| p.is_file()))
    else {
        missing("php on PATH (PHP 8.2 CLI)", "`apt-get install php8.2-cli` as root (bash .ci/run does)")
    };
    php
}

/// Debian's `redis-server`, which cluster tests start on a free port.
pub fn redis_server() -> PathBuf {
    let redis = PathBuf::from("/usr/bin/redis-server");
    if !redis.exists() {
        missing("/usr/bin/redis-server", "`apt-get install redis-server` as root (bash .ci/run does)");
    }
    redis
}

/// Runs `promtool check metrics` on a scrape: (it passed, what it said).
pub fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("promtool output");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}
