//! A fault-injection point for the crash tests, off unless the environment
//! asks for it: with `MATCH_FAULT_POINT=<name>`, `MATCH_FAULT_UID=<uid>` and
//! `MATCH_FAULT_FILE=<path>`, the first worker to reach point `<name>` for
//! that player writes its pid into the file and freezes there, holding the
//! pool lock in the middle of an update, until the test SIGKILLs it. The
//! file is created exclusively, so the fault fires once per run, never again
//! in the replacement worker that inherits the same environment.

use std::sync::OnceLock;
use std::time::Duration;

struct Fault {
    point: String,
    uid: i64,
    file: String,
}

fn configured() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            Some(Fault {
                point: std::env::var("MATCH_FAULT_POINT").ok()?,
                uid: std::env::var("MATCH_FAULT_UID").ok()?.parse().ok()?,
                file: std::env::var("MATCH_FAULT_FILE").ok()?,
            })
        })
        .as_ref()
}

/// Freezes this worker at `point` while it works on player `uid`, if the
/// environment set that fault and it has not fired yet.
pub(crate) fn point(point: &str, uid: i64) {
    let Some(fault) = configured() else { return };
    if fault.point != point || fault.uid != uid {
        return;
    }
    let Ok(mut file) = std::fs::OpenOptions::new().write(true).create_new(true).open(&fault.file) else { return };
    let _ = std::io::Write::write_all(&mut file, std::process::id().to_string().as_bytes());
    drop(file);
    // Blocks the worker's only thread on purpose: nothing else may run, so
    // the pool lock stays held and the update stays half done until the
    // test kills this process.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
