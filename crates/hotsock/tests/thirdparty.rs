//! Third-party clients against the real server: Python `websockets` and
//! Node `ws`, installed by `.ci/run` (a venv under `target/venv`, `npm ci`
//! in `tests/node`).

use hotsock_testkit::{TestServer, bin, repo_root};

fn echo_server() -> TestServer {
    TestServer::start(&format!("[workers]\ncommand = [\"{}\"]\ncount = 2\n", bin("echo").display()))
}

fn run_client(program: &std::path::Path, script: &str, url: &str) {
    assert!(program.exists(), "{} is missing; run .ci/run once to install the test clients", program.display());
    let output = std::process::Command::new(program)
        .arg(repo_root().join(script))
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
}

#[test]
fn python_websockets_client_echoes_through_workers() {
    let server = echo_server();
    let python = repo_root().join("target/venv/bin/python");
    run_client(&python, "tests/python/echo_client.py", &format!("ws://{}", server.addr));
}

#[test]
fn node_ws_client_echoes_through_workers() {
    let server = echo_server();
    assert!(
        repo_root().join("tests/node/node_modules/ws").exists(),
        "tests/node/node_modules is missing; run `npm ci` in tests/node (.ci/run does)"
    );
    run_client(&node(), "tests/node/echo_client.js", &format!("ws://{}", server.addr));
}

/// The `node` on PATH.
fn node() -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("node")).find(|p| p.exists()))
        .expect("node is not on PATH")
}
