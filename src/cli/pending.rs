//! Commands whose implementation has not landed yet (image-installer): they parse any
//! arguments and say so plainly, with no output pretending otherwise.

use clap::Args;

use super::{CliError, CliResult};

#[derive(Args, Debug)]
pub struct PendingArgs {
    /// Arguments (accepted, not yet used).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(command: &str, _args: &PendingArgs) -> CliResult {
    Err(CliError::user(format!(
        "`composer {command}` is not implemented yet in this version; \
         `validate`, `graph`, `render` and `eval` are"
    )))
}
