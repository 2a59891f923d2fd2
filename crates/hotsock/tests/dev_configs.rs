//! The examples' watch builds select the same packages as the first build
//! the README (and each config's header) tells you to run. Cargo resolves
//! dependency features over the packages selected, so a watch build with
//! fewer `-p` than the first build recompiles tokio, serde and more on the
//! first save: 30 s instead of about 1 s here (issue 12).

use std::collections::BTreeSet;

use hotsock_server::Config;
use hotsock_testkit::repo_root;

/// The `-p` values of the `cargo build` at the start of `line`, up to `&&`.
fn packages(line: &str) -> BTreeSet<String> {
    let command = line.split("&&").next().unwrap_or("");
    let words: Vec<&str> = command.split_whitespace().collect();
    words.windows(2).filter(|pair| pair[0] == "-p").map(|pair| pair[1].to_owned()).collect()
}

#[test]
fn watch_builds_select_the_packages_of_the_documented_first_build() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let mut checked = 0;
    for example in ["echo", "matchmaker", "chat"] {
        let relative = format!("examples/{example}/hotsock.dev.toml");
        let config = Config::load(&root.join(&relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
        let watch = config.reload.watch.as_ref().unwrap_or_else(|| panic!("{relative} has no [reload.watch]"));
        let watched: BTreeSet<String> = packages(&watch.build.join(" "));
        let header = std::fs::read_to_string(root.join(&relative)).expect("read");
        let documented = readme
            .lines()
            .chain(header.lines().map(|line| line.trim_start_matches(['#', ' '])))
            .filter(|line| line.starts_with("cargo build") && line.contains(&format!("-c {relative}")));
        for line in documented {
            assert_eq!(packages(line), watched, "{relative}'s watch build vs `{line}`");
            checked += 1;
        }
    }
    assert!(checked >= 5, "the README and each config's header document the first build ({checked} found)");
}
