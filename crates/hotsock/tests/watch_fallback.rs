//! The watcher's fallback: when inotify cannot be set up, the server polls
//! instead, says so in `status`, and edits still reload. A test binary of
//! its own, because it uses up this user's inotify instances while it runs
//! (test binaries run one at a time; tests within one run in parallel).

use hotsock_testkit::{TempDir, TestServer, bin, wait_for};
use nix::sys::inotify::{InitFlags, Inotify};

/// Above this many instances per user the test would need more open files
/// than it may have, so it cannot exhaust them.
const INSTANCES_WE_CAN_EXHAUST: usize = 4096;

#[test]
fn without_inotify_the_watcher_polls_and_still_reloads() {
    let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .expect("fs.inotify.max_user_instances");
    assert!(
        limit <= INSTANCES_WE_CAN_EXHAUST,
        "fs.inotify.max_user_instances is {limit}; this test exhausts it and cannot go past {INSTANCES_WE_CAN_EXHAUST}"
    );
    // Take every inotify instance this user may have: the server (same
    // user) then fails to create its own, as on a host where other
    // programs took them all.
    let mut held = Vec::new();
    while let Ok(instance) = Inotify::init(InitFlags::IN_CLOEXEC) {
        held.push(instance);
        assert!(held.len() <= limit, "inotify instances are not limited as /proc says");
    }
    let dir = TempDir::new("fallback");
    std::fs::write(dir.path().join("watched.txt"), "v1\n").expect("write");
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 1\n[reload.watch]\nenabled = true\npaths = [\"{}\"]\ndebounce_ms = 100\npoll_interval_ms = 100\n",
        bin("echo").display(),
        dir.path().display()
    );
    let server = TestServer::start(&config);
    let watch = wait_for("watcher up", || {
        let watch = server.try_status()?["watch"].clone();
        watch["backend"].is_string().then_some(watch)
    });
    assert_eq!(watch["backend"], "poll", "{watch}");
    let reason = watch["fallback_reason"].as_str().expect("a fallback reason").to_owned();
    assert!(reason.contains("inotify unavailable") && reason.contains("polling every 100 ms"), "{reason}");
    assert!(server.log().contains("inotify unavailable"), "the log says it too: {}", server.log());
    std::fs::write(dir.path().join("watched.txt"), "v2\n").expect("edit");
    wait_for("reload after the edit", || (server.try_status()?["generation"] == 2).then_some(()));
    drop(held);
}
