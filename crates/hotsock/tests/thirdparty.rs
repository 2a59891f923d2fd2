//! Third-party clients against the real server: Python `websockets` and
//! Node `ws`, installed by `.ci/run` (a venv under `target/venv`, `npm ci`
//! in `tests/node`).

use hotsock_testkit::{TestServer, bin, node, python, repo_root};

fn echo_server() -> TestServer {
    TestServer::start(&format!("[workers]\ncommand = [\"{}\"]\ncount = 2\n", bin("echo").display()))
}

fn run_client(program: &std::path::Path, script: &str, url: &str) {
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
    run_client(&python(), "tests/python/echo_client.py", &format!("ws://{}", server.addr));
}

#[test]
fn node_ws_client_echoes_through_workers() {
    let node = node();
    let server = echo_server();
    run_client(&node, "tests/node/echo_client.js", &format!("ws://{}", server.addr));
}
