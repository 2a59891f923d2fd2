//! BENCHMARKS.md: the machine, the date, and one section per scenario.

pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    format!("{cores} cores, {:.0} GiB RAM", mem_kib as f64 / (1024.0 * 1024.0))
}

pub(crate) fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown date".into())
}

const HEADER: &str = "# Benchmarks\n\nEvery figure below comes from one run of the command shown under it, on a \
shared machine; absolute numbers move from run to run, the ratios measured side by side in the same run are \
what to read. Each section is rewritten by its own scenario (`hotsock-bench <scenario>`); `scripts/bench` runs \
all but `cluster` and the pinned ones. Charts are in `docs/bench/`, each run's figures as JSON in `target/bench/<scenario>.json`.\n";

/// The order of the sections in the report (that of `hotsock-bench all`).
const ORDER: [&str; 14] = [
    "echo",
    "echo-pinned",
    "pipelined",
    "pipelined-pinned",
    "idle",
    "reload",
    "upgrade",
    "tasks",
    "fanout",
    "cluster",
    "table",
    "matchmaker",
    "matchmaker-pool",
    "edit",
];

/// Replaces one scenario's section of the report file, or inserts it in
/// its place in `ORDER`, leaving the others as they are.
pub(crate) fn write_section(path: &std::path::Path, scenario: &str, body: &str) -> std::io::Result<()> {
    let begin = format!("<!-- scenario:{scenario} -->");
    let end = format!("<!-- /scenario:{scenario} -->");
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{body}{end}\n");
    let text = match (existing.find(&begin), existing.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &existing[..a], existing[b + end.len()..].trim_start_matches('\n'))
        }
        _ if existing.starts_with("# Benchmarks") && existing.contains("<!-- scenario:") => {
            let later = ORDER.iter().skip_while(|s| **s != scenario).skip(1);
            match later.filter_map(|s| existing.find(&format!("<!-- scenario:{s} -->"))).min() {
                Some(at) => format!("{}{section}{}", &existing[..at], &existing[at..]),
                None => format!("{}\n{section}", existing.trim_end()),
            }
        }
        _ => format!("{HEADER}\n{section}"),
    };
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_and_inserted_in_order() {
        let path = std::env::temp_dir().join(format!("hotsock-bench-report-{}.md", std::process::id()));
        let _ = std::fs::remove_file(&path);
        write_section(&path, "reload", "reload 1\n").expect("write");
        write_section(&path, "echo", "echo 1\n").expect("write");
        write_section(&path, "edit", "edit 1\n").expect("write");
        write_section(&path, "idle", "idle 1\n").expect("write");
        write_section(&path, "reload", "reload 2\n").expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle} missing: {text}"));
        assert!(text.starts_with("# Benchmarks"));
        assert!(
            at("echo 1") < at("idle 1") && at("idle 1") < at("reload 2") && at("reload 2") < at("edit 1"),
            "{text}"
        );
        assert!(!text.contains("reload 1"), "{text}");
        let _ = std::fs::remove_file(&path);
    }
}
