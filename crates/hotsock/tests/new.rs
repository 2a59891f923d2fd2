//! `hotsock new` end to end, as a newcomer uses it: create a project in an
//! empty directory, run the commands it prints (build, start), talk to it
//! over WebSocket, edit its source while the dev config watches, and see
//! the new code answer on the open connection. Its own test binary, so
//! nothing else competes with cargo while it runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hotsock_testkit::{bin, connect, free_port, recv, repo_root, send, wait_for};
use serde_json::Value;

/// A build of hotsock-worker's dependencies from scratch on a busy 2-core
/// machine; later runs reuse `target/new-project-test/target`.
const FIRST_BUILD: Duration = Duration::from_secs(600);
/// One save: an incremental build of the one crate plus the reload. Loose,
/// because the machine is shared; the measured time is printed.
const GO_LIVE: Duration = Duration::from_secs(60);

fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("cargo"))
}

/// The `hotsock start` the test started; stopped (or killed) at the end.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        // Killing the server kills its workers too (parent-death signal).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The printed commands (indented lines), as words.
fn printed_commands(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("  "))
        .map(|command| command.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// Runs one printed command in `dir`, `hotsock` and `cargo` being the ones
/// under test. The generated project is built offline: `hotsock new` wrote
/// this repository's Cargo.lock into it, so everything is already here.
fn command(words: &[String], dir: &Path) -> Command {
    let program = match words[0].as_str() {
        "cargo" => cargo(),
        "hotsock" => bin("hotsock"),
        printed => {
            assert_eq!(Path::new(printed), bin("hotsock").canonicalize().expect("canonical"), "the printed hotsock");
            PathBuf::from(printed)
        }
    };
    let mut command = Command::new(program);
    command
        .args(&words[1..])
        .current_dir(dir)
        .env("CARGO_NET_OFFLINE", "true")
        // The project's target/ is a link into this repository's (below);
        // an inherited target dir would put the binary elsewhere.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_project_builds_starts_answers_and_goes_live_on_save() {
    // A fixed place under this repository's target/, so that reruns reuse
    // the build (a temp dir's new path would leave a new copy each time).
    // It also puts a workspace above the project, this repository's, as
    // when a newcomer runs `hotsock new` inside a checkout or a monorepo:
    // the project must be its own workspace to build at all.
    let root = repo_root().join("target/new-project-test");
    let home = root.join("home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).expect("create the test's home");
    let port = free_port();
    let output = Command::new(bin("hotsock"))
        .args(["new", "demo", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&home)
        .output()
        .expect("run hotsock new");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let commands = printed_commands(&stdout);
    assert_eq!(commands.len(), 3, "cd, build, start:\n{stdout}");
    assert_eq!(commands[0], ["cd", "demo"], "{stdout}");
    assert_eq!(commands[1], ["cargo", "build"], "{stdout}");
    assert_eq!(commands[2][1..], ["start", "-c", "hotsock.dev.toml"], "{stdout}");
    let project = home.join("demo");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).expect("Cargo.toml");
    let worker_crate = repo_root().join("crates/hotsock-worker");
    assert!(manifest.contains(&format!("path = \"{}\"", worker_crate.display())), "{manifest}");
    let lock = std::fs::read_to_string(project.join("Cargo.lock")).expect("hotsock new writes Cargo.lock");
    assert_eq!(lock, std::fs::read_to_string(repo_root().join("Cargo.lock")).expect("repo lock"));

    // It never overwrites, and names must be crate names.
    let source = project.join("src/main.rs");
    let original = std::fs::read_to_string(&source).expect("main.rs");
    for (name, error) in [("demo", "demo already exists"), ("9lives", "not a valid crate name")] {
        let output = Command::new(bin("hotsock")).args(["new", name]).current_dir(&home).output().expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(error), "{stderr}");
    }
    assert!(!home.join("9lives").exists());
    assert_eq!(std::fs::read_to_string(&source).expect("main.rs"), original, "untouched");

    // Keep the build across runs: the project's target/ is a directory
    // that outlives `home`; the commands stay as printed.
    let target = root.join("target");
    std::fs::create_dir_all(&target).expect("target dir");
    std::os::unix::fs::symlink(&target, project.join("target")).expect("link target/");

    let started = Instant::now();
    let output = command(&commands[1], &project).output().expect("run cargo build");
    assert!(output.status.success(), "the printed build failed:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(started.elapsed() < FIRST_BUILD);

    let log = std::fs::File::create(home.join("server.log")).expect("log");
    let _server =
        Started(command(&commands[2], &project).stdout(Stdio::null()).stderr(log).spawn().expect("run hotsock start"));
    let server_log = || std::fs::read_to_string(home.join("server.log")).unwrap_or_default();
    let status = || -> Option<Value> {
        let mut command = Command::new(bin("hotsock"));
        let output =
            command.args(["status", "--json", "-c", "hotsock.dev.toml"]).current_dir(&project).output().ok()?;
        serde_json::from_slice(&output.stdout).ok()
    };
    wait_for("the new project's workers and watcher", || {
        let status = status()?;
        let ready = status["workers"].as_array()?.iter().all(|w| w["state"] == "ready");
        (ready && status["watch"]["backend"].is_string()).then_some(())
    });

    let mut client = connect(&format!("ws://127.0.0.1:{port}/")).await;
    send(&mut client, "hi").await;
    assert_eq!(recv(&mut client).await, "v1: hi");

    // The edit a newcomer makes first: the reply.
    let text = std::fs::read_to_string(&source).expect("read");
    assert!(text.contains("format!(\"v1: {text}\")"), "the template changed; update this test");
    std::fs::write(&source, text.replace("format!(\"v1: {text}\")", "format!(\"v2: {text}\")")).expect("edit");
    let saved = Instant::now();
    loop {
        send(&mut client, "after").await;
        let reply = recv(&mut client).await;
        if reply == "v2: after" {
            break;
        }
        assert_eq!(reply, "v1: after", "only the old or the new code may answer");
        assert!(saved.elapsed() < GO_LIVE, "the edit did not go live; server log:\n{}", server_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = saved.elapsed();
    let status = status().expect("status");
    println!(
        "first save to live: {} ms (build {} ms, reload {} ms)",
        live.as_millis(),
        status["watch"]["last_build"]["duration_ms"],
        status["last_reload"]["duration_ms"]
    );
    assert_eq!(status["watch"]["last_build"]["ok"], true, "{status}");
    assert_eq!(status["generation"], 2, "one build, one reload: {status}");

    let mut stop = Command::new(bin("hotsock"));
    let output =
        stop.args(["stop", "-c", "hotsock.dev.toml"]).current_dir(&project).output().expect("run hotsock stop");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
