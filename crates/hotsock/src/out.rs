//! Everything the CLI prints. Its output is often piped (`hotsock status |
//! head -1`), and a reader that stops early closes the pipe: Rust ignores
//! SIGPIPE, so the next write fails with EPIPE, and `println!` turns that
//! into a panic with a backtrace. Writes go through [`line`] instead, which
//! ends the process quietly with exit 0 when stdout is gone: the reader has
//! what it wanted.
//!
//! Never use `println!` in this crate.

use std::io::Write;

/// Prints one line to stdout (the [`line`] function with `format!` syntax).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// Writes `args` and a newline to stdout; exits quietly if the reader has
/// gone, with exit 1 and a message on any other write error.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args).and_then(|()| stdout.write_all(b"\n")) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // stderr may be gone too; nothing better to do than try once.
        let _ = writeln!(std::io::stderr(), "hotsock: cannot write to stdout: {error}");
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each cause once: library errors
/// often include their source in their own message (`cannot read FILE:
/// No such file or directory`) and report it as `source()` as well, so
/// anyhow's `{:#}` would print the reason twice.
pub(crate) fn error_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !previous.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        previous = text;
    }
    message
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read x.toml: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_its_parents_message_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let error = anyhow::Error::new(Read { source: io }).context("loading the config");
        assert_eq!(
            error_line(&error),
            "loading the config: cannot read x.toml: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let error = anyhow::anyhow!("socket refused").context("asking the server").context("status");
        assert_eq!(error_line(&error), "status: asking the server: socket refused");
    }
}
