//! The `composer` binary: parses arguments, runs the command, prints the
//! error chain once, and exits 0 (ok), 1 (problem in the input) or 2
//! (internal error).

use std::process::ExitCode;

use clap::Parser;
use composer::cli::{Cli, CliError, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let inner = match &e {
                CliError::User(e) | CliError::Internal(e) => e,
            };
            eprintln!("error: {inner:#}");
            e.exit_code()
        }
    }
}
