//! Watch and build: edits trigger exactly one build and one reload, failed
//! builds change nothing, ignored paths never build, polling works too.

use std::path::PathBuf;
use std::time::Duration;

use hotsock_testkit::{TempDir, TestServer, bin, connect, recv, send, wait_for};
use serde_json::Value;

struct Project {
    dir: TempDir,
}

impl Project {
    fn new() -> Project {
        let dir = TempDir::new("project");
        std::fs::create_dir_all(dir.path().join("src")).expect("src");
        std::fs::write(dir.path().join("src/lib.rs"), "fn main() {}\n").expect("write");
        Project { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }

    /// Lines the build script appended: one per build.
    fn builds(&self) -> usize {
        std::fs::read_to_string(self.path("builds.log")).map(|t| t.lines().count()).unwrap_or(0)
    }
}

/// A build command that records each run, fails while `src/lib.rs` says
/// `broken`, and takes `seconds`.
fn build_script(project: &Project, seconds: f64) -> String {
    let dir = project.dir.path().display();
    format!(
        "[\"sh\", \"-c\", \"echo build >> {dir}/builds.log; sleep {seconds}; if grep -q broken {dir}/src/lib.rs; then echo 'error[E0425]: cannot find value `broken` in this scope'; exit 1; fi; echo Finished\"]"
    )
}

fn start(project: &Project, watch: &str) -> TestServer {
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\n[reload.watch]\nenabled = true\npaths = [\"{}\"]\n{watch}",
        bin("echo").display(),
        project.path("src").display()
    );
    let server = TestServer::start(&config);
    // The watcher is set up once status shows its backend.
    wait_for("watcher up", || server.try_status()?["watch"]["backend"].as_str().map(|_| ()));
    server
}

fn watch_status(server: &TestServer) -> Value {
    server.status()["watch"].clone()
}

fn generation(server: &TestServer) -> u64 {
    server.status()["generation"].as_u64().expect("generation")
}

/// Waits until `n` builds finished and the server serves `generation`.
fn wait_built(server: &TestServer, builds: u64, generation: u64) -> Value {
    wait_for(&format!("build {builds} and generation {generation}"), || {
        let status = server.try_status()?;
        let watch = &status["watch"];
        let done = watch["builds"] == builds && watch["building"] == false && status["generation"] == generation;
        done.then_some(status)
    })
}

/// Lets a few debounce windows pass: "exactly one build" can only be
/// checked by waiting a bounded time for a second one that must not come.
fn settle() {
    std::thread::sleep(Duration::from_millis(800));
}

#[tokio::test(flavor = "multi_thread")]
async fn saves_trigger_exactly_one_build_and_one_reload_each() {
    let project = Project::new();
    let server = start(&project, &format!("debounce_ms = 200\nbuild = {}\n", build_script(&project, 0.1)));
    assert_eq!(watch_status(&server)["backend"], "inotify");
    let mut client = connect(&server.url("/")).await;
    // Write in place.
    project.write("src/lib.rs", "fn main() { 1 }\n");
    let status = wait_built(&server, 1, 2);
    assert_eq!(status["watch"]["last_build"]["ok"], true);
    assert!(status["watch"]["last_build"]["trigger"].as_str().expect("trigger").ends_with("src/lib.rs"));
    let text = String::from_utf8(server.cli(&["status"]).stdout).expect("utf8");
    assert!(text.contains(", 1 build, 0 failed"), "singular for one:\n{text}");
    let row = text.find("\n0 ").expect("slot 0's row");
    assert!(row < text.find("\nwatching ").expect("watch section"), "the table comes before the sections:\n{text}");
    // Write a temporary file and rename it over the original (atomic save).
    project.write("src/.lib.rs.tmp123", "fn main() { 2 }\n");
    std::fs::rename(project.path("src/.lib.rs.tmp123"), project.path("src/lib.rs")).expect("rename");
    wait_built(&server, 2, 3);
    // Twenty rapid saves inside one debounce window: one build.
    for n in 0..20 {
        project.write("src/lib.rs", &format!("fn main() {{ {n} }}\n"));
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_built(&server, 3, 4);
    settle();
    assert_eq!(project.builds(), 3, "one build per burst");
    assert_eq!(generation(&server), 4, "one reload per build");
    // The connection opened before all of it still works.
    send(&mut client, "still here").await;
    assert_eq!(recv(&mut client).await, "v1:still here");
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_sees_the_same_edits() {
    let project = Project::new();
    let server = start(
        &project,
        &format!("poll = true\npoll_interval_ms = 100\ndebounce_ms = 200\nbuild = {}\n", build_script(&project, 0.0)),
    );
    assert_eq!(watch_status(&server)["backend"], "poll");
    project.write("src/lib.rs", "fn main() { 1 }\n");
    wait_built(&server, 1, 2);
    project.write("src/new_module.rs", "pub fn f() {}\n");
    wait_built(&server, 2, 3);
    std::fs::remove_file(project.path("src/new_module.rs")).expect("remove");
    wait_built(&server, 3, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_build_reloads_nothing_and_the_next_good_one_does() {
    let project = Project::new();
    let server = start(&project, &format!("debounce_ms = 100\nbuild = {}\n", build_script(&project, 0.0)));
    let mut client = connect(&server.url("/")).await;
    project.write("src/lib.rs", "broken\n");
    let status = wait_for("failed build", || {
        let status = server.try_status()?;
        (status["watch"]["builds_failed"] == 1 && status["watch"]["building"] == false).then_some(status)
    });
    let build = &status["watch"]["last_build"];
    assert_eq!(build["ok"], false);
    assert!(build["exit"].as_str().expect("exit").contains("exit status: 1"), "{build}");
    let tail: Vec<&str> = build["output_tail"].as_array().expect("tail").iter().filter_map(Value::as_str).collect();
    assert!(tail.iter().any(|l| l.contains("error[E0425]")), "{tail:?}");
    assert_eq!(status["generation"], 1, "nothing reloaded");
    let table = String::from_utf8(server.cli(&["status"]).stdout).expect("utf8");
    assert!(table.contains("last build: FAILED") && table.contains("error[E0425]"), "{table}");
    send(&mut client, "untouched").await;
    assert_eq!(recv(&mut client).await, "v1:untouched");
    project.write("src/lib.rs", "fixed\n");
    wait_built(&server, 2, 2);
    assert_eq!(watch_status(&server)["last_build"]["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_during_a_build_lead_to_exactly_one_more_build() {
    let project = Project::new();
    let server = start(&project, &format!("debounce_ms = 100\nbuild = {}\n", build_script(&project, 1.0)));
    project.write("src/lib.rs", "fn main() { 1 }\n");
    wait_for("build running", || (server.try_status()?["watch"]["building"] == true).then_some(()));
    for n in 0..3 {
        project.write("src/lib.rs", &format!("fn main() {{ {n} }}\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_built(&server, 2, 3);
    settle();
    assert_eq!(project.builds(), 2);
    assert_eq!(generation(&server), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn ignored_paths_never_trigger_a_build() {
    let project = Project::new();
    let server =
        start(&project, &format!("debounce_ms = 100\nbuild = {}\nignore = [\"*.log\"]\n", build_script(&project, 0.0)));
    for path in
        ["src/target/debug/x", "src/.git/index", "src/a.rs.swp", "src/b.rs~", "src/.#c.rs", "src/4913", "src/debug.log"]
    {
        project.write(path, "x");
    }
    settle();
    let watch = watch_status(&server);
    assert_eq!(watch["changes"], 0, "{watch}");
    assert_eq!(project.builds(), 0);
    // The watcher is alive: a real source change builds.
    project.write("src/real.rs", "x");
    wait_built(&server, 1, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_build_command_a_change_reloads_directly() {
    let project = Project::new();
    let server = start(&project, "debounce_ms = 100\n");
    project.write("src/lib.rs", "changed\n");
    wait_for("reload", || (server.try_status()?["generation"] == 2).then_some(()));
    assert_eq!(watch_status(&server)["builds"], 0);
    let message = server.status()["last_reload"]["message"].as_str().expect("message").to_owned();
    assert!(message.starts_with("watch: ") && message.contains("src/lib.rs changed"), "{message}");
}

#[test]
fn watch_needs_its_section_and_existing_paths() {
    let dir = TempDir::new("watchcfg");
    let config = dir.path().join("hotsock.toml");
    std::fs::write(&config, "[workers]\ncommand = [\"x\"]\n").expect("write");
    let output =
        std::process::Command::new(bin("hotsock")).args(["start", "--watch", "-c"]).arg(&config).output().expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--watch needs a [reload.watch] section"));
    std::fs::write(&config, "[workers]\ncommand = [\"x\"]\n[reload.watch]\npaths = [\"nope\"]\n").expect("write");
    let output = std::process::Command::new(bin("hotsock")).args(["check", "-c"]).arg(&config).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("hotsock.toml:4: `reload.watch.paths`"), "{stderr}");
}
