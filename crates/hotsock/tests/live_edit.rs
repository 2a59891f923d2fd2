//! The developer loop end to end: a temp copy of the echo example is built
//! by cargo, served with `[reload.watch]`, its Rust source is edited while a
//! client is connected, cargo rebuilds incrementally, and the same
//! connection gets the new code's reply. Its own test binary, so nothing
//! else competes with cargo while it runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hotsock_testkit::{TempDir, TestServer, connect, recv, repo_root, send, wait_for};

/// A build from scratch on a busy 2-core CI machine; later runs reuse it.
const FIRST_BUILD: Duration = Duration::from_secs(600);
/// An incremental rebuild plus the reload.
const GO_LIVE: Duration = Duration::from_secs(180);

fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("cargo"))
}

/// Copies examples/echo into `dir` as a standalone crate `echo-live`.
fn copy_echo(dir: &Path) {
    let root = repo_root();
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    std::fs::copy(root.join("examples/echo/src/main.rs"), dir.join("src/main.rs")).expect("copy source");
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).expect("copy lock");
    let manifest = format!(
        "[package]\nname = \"echo-live\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\nhotsock-worker = {{ path = \"{}\" }}\ntokio = {{ version = \"1\", features = [\"time\"] }}\n\n[workspace]\n",
        root.join("crates/hotsock-worker").display()
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).expect("manifest");
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_the_echo_source_goes_live_on_an_open_connection() {
    let project = TempDir::new("live");
    copy_echo(project.path());
    let target = repo_root().join("target/live-echo");
    let manifest = project.path().join("Cargo.toml");
    let build = [
        cargo().display().to_string(),
        "build".into(),
        "--offline".into(),
        "--manifest-path".into(),
        manifest.display().to_string(),
    ];
    let started = Instant::now();
    let output = Command::new(&build[0]).args(&build[1..]).env("CARGO_TARGET_DIR", &target).output().expect("cargo");
    assert!(output.status.success(), "first build failed:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(started.elapsed() < FIRST_BUILD);
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\n[reload.watch]\nenabled = true\npaths = [\"{}\"]\ndebounce_ms = 200\nbuild = {:?}\n",
        target.join("debug/echo-live").display(),
        project.path().join("src").display(),
        build
    );
    let server = TestServer::start_with_env(&config, &[("CARGO_TARGET_DIR", target.to_str().expect("utf8"))]);
    wait_for("watcher up", || server.try_status()?["watch"]["backend"].as_str().map(|_| ()));
    let mut client = connect(&server.url("/")).await;
    send(&mut client, "before").await;
    assert_eq!(recv(&mut client).await, "v1:before");

    // The edit a developer makes: a new default prefix.
    let source = project.path().join("src/main.rs");
    let text = std::fs::read_to_string(&source).expect("read");
    assert!(text.contains("\"v1:\".to_owned()"), "the echo example changed; update this test");
    std::fs::write(&source, text.replace("\"v1:\".to_owned()", "\"v2:\".to_owned()")).expect("edit");

    // The connection opened before the edit gets the new code's reply.
    hotsock_testkit::until_new_code_answers(&mut client, GO_LIVE, Duration::from_millis(100), || server.log()).await;
    let status = server.status();
    assert_eq!(status["watch"]["last_build"]["ok"], true, "{status}");
    assert_eq!(status["generation"], 2, "one build, one reload: {status}");
    assert_eq!(status["connections"], 1);
}
