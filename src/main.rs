//! The `composer` binary: parses arguments, runs the command, prints the
//! error chain once, and exits 0 (ok), 1 (problem in the input) or 2
//! (internal error).

use std::process::ExitCode;

use clap::Parser;
use composer::cli::{Cli, CliError, run};

fn main() -> ExitCode {
    // A wrong command line is a problem in the input (1), not clap's 2,
    // which here means an internal error; --help and --version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let inner = match &e {
                CliError::User(e) | CliError::Internal(e) => e,
            };
            eprintln!("error: {}", chain(inner));
            e.exit_code()
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text
/// the message before it already shows (errors that print `{path}:
/// {source}` and also expose `source` as their cause).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !last.is_empty() && last.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
}
