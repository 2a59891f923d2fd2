//! `hotsock new NAME`: a worker crate of one's own, outside this repository.
//!
//! It writes a directory NAME with a Cargo.toml that depends on
//! `hotsock-worker` (this hotsock's own source tree by path, or `--git URL`),
//! a `src/main.rs` with one handler, `hotsock.toml` (release build) and
//! `hotsock.dev.toml` (debug build, watch and rebuild), and prints the
//! commands that build and start it. It never overwrites anything: an
//! existing NAME is an error, and a half-written directory is removed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::out::say;

/// The SDK's source tree in the checkout this binary was built from
/// (`cargo install --path crates/hotsock` keeps pointing there).
const WORKER_CRATE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../hotsock-worker");

/// The dependency versions hotsock-worker was built and tested with. Copied
/// into a path-dependent project so its first build resolves to the same
/// versions, reuses what is already downloaded and works `--offline`.
const WORKSPACE_LOCK: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"));

/// Longest crate name accepted: crates.io's limit, plenty for a directory.
const NAME_CHARS_MAX: usize = 64;

/// Names cargo or rustc refuse or that would shadow a standard crate.
const RESERVED_NAMES: &[&str] = &[
    "alloc",
    "core",
    "proc_macro",
    "proc-macro",
    "std",
    "test",
    "self",
    "super",
    "crate",
    "Self",
    "build",
    "deps",
    "examples",
    "incremental",
    "target",
];

/// Rust keywords: cargo refuses them as package names.
const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "extern", "false", "fn", "for", "if",
    "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "static", "struct", "trait",
    "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "gen", "macro",
    "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// Arguments of `hotsock new`.
#[derive(Args)]
pub(crate) struct NewArgs {
    /// The crate's name, also the directory created (letters, digits, `-`, `_`).
    name: String,
    /// Depend on hotsock-worker from this git repository instead of this
    /// hotsock's source tree.
    #[arg(long, value_name = "URL")]
    git: Option<String>,
    /// The address both configs listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9600")]
    listen: SocketAddr,
}

/// Creates the project and prints how to build and start it.
pub(crate) fn run(args: NewArgs) -> Result<()> {
    validate_name(&args.name)?;
    let dir = PathBuf::from(&args.name);
    let (dependency, source) = match &args.git {
        Some(url) => (format!("hotsock-worker = {{ git = {} }}", toml_string(url)), url.clone()),
        None => {
            let path = Path::new(WORKER_CRATE_DIR).canonicalize().with_context(|| {
                format!(
                    "this hotsock was built from a checkout whose crates/hotsock-worker is gone ({WORKER_CRATE_DIR}); \
                     pass --git URL to depend on it from a repository"
                )
            })?;
            let shown = path.display().to_string();
            (format!("hotsock-worker = {{ path = {} }}", toml_string(&shown)), shown)
        }
    };
    let files = render(&args.name, &dependency, args.listen, args.git.is_none());
    // `create_dir` fails if NAME exists, even as a dangling symlink: the
    // check and the creation are one step, so nothing is ever overwritten.
    if let Err(error) = std::fs::create_dir(&dir) {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            bail!("{} already exists; `hotsock new` only creates a new directory (pick another NAME)", dir.display());
        }
        return Err(error).with_context(|| format!("cannot create {}", dir.display()));
    }
    if let Err(error) = write_all(&dir, &files) {
        // Ours alone: created above, so removing it loses nothing of the user's.
        let _ = std::fs::remove_dir_all(&dir);
        return Err(error);
    }
    let hotsock = invocation();
    say!("created {}/: a worker crate depending on hotsock-worker from {source}", args.name);
    say!("build it and start it (ws://{}/), then edit src/main.rs and save: the new code answers", args.listen);
    say!("  cd {}", args.name);
    say!("  cargo build");
    say!("  {hotsock} start -c hotsock.dev.toml");
    say!("in production: cargo build --release && {hotsock} start   (reads ./hotsock.toml)");
    Ok(())
}

/// The project's files, relative path and text.
fn render(name: &str, dependency: &str, listen: SocketAddr, with_lock: bool) -> Vec<(&'static str, String)> {
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{dependency}}", dependency)
            .replace("{{listen}}", &listen.to_string())
    };
    let mut files = vec![
        ("Cargo.toml", fill(include_str!("../templates/Cargo.toml.tmpl"))),
        ("src/main.rs", fill(include_str!("../templates/main.rs.tmpl"))),
        ("hotsock.toml", fill(include_str!("../templates/hotsock.toml.tmpl"))),
        ("hotsock.dev.toml", fill(include_str!("../templates/hotsock.dev.toml.tmpl"))),
        (".gitignore", include_str!("../templates/gitignore.tmpl").to_owned()),
    ];
    // A git dependency resolves from that repository anyway; a lock of the
    // local tree's versions would only be rewritten.
    if with_lock {
        files.push(("Cargo.lock", WORKSPACE_LOCK.to_owned()));
    }
    files
}

fn write_all(dir: &Path, files: &[(&str, String)]) -> Result<()> {
    for (relative, text) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Accepts what cargo accepts as a package name and is a plain directory
/// name, with a reason for anything else.
fn validate_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.chars().count() > NAME_CHARS_MAX {
        Some(format!("it is longer than {NAME_CHARS_MAX} characters"))
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("it must start with an ASCII letter".to_owned())
    } else if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        Some(format!("{bad:?} is not allowed (letters, digits, `-` and `_` only)"))
    } else if KEYWORDS.contains(&name) {
        Some("it is a Rust keyword".to_owned())
    } else if RESERVED_NAMES.contains(&name) {
        Some("the name is reserved".to_owned())
    } else {
        None
    };
    match why {
        Some(why) => bail!("`{name}` is not a valid crate name: {why}"),
        None => Ok(()),
    }
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// How to run this binary again: `hotsock` when that name on PATH is this
/// very executable, else its full path (a fresh checkout's target/debug).
fn invocation() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else { return "hotsock".into() };
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("hotsock")).find(|candidate| candidate.is_file())
    });
    match on_path.and_then(|p| p.canonicalize().ok()) {
        Some(found) if found == me => "hotsock".into(),
        _ => me.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{toml_string, validate_name};

    #[test]
    fn crate_names_follow_cargo() {
        for good in ["demo", "my-game", "a_1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1st", "-x", "has space", "a/b", "..", "fn", "std", "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn toml_strings_escape_what_toml_needs() {
        assert_eq!(toml_string(r#"C:\x "y""#), r#""C:\\x \"y\"""#);
        assert_eq!(toml_string("a\nb"), r#""a\u000Ab""#);
    }
}
