//! `composer eval --target TARGET 'TEMPLATE'`: renders a template in the
//! target's variable context and prints it without a trailing newline, as
//! `bldr eval` does (so `$(shell composer eval ...)` in a Makefile works).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::{CliError, CliResult, Global, RenderOpts, load_checked};
use crate::defs::template::render_inline;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The stage whose variables the template sees.
    #[arg(long, short = 't', value_name = "TARGET")]
    pub target: String,
    /// The Go template to render, e.g. '{{ .VERSION }}'.
    #[arg(value_name = "TEMPLATE")]
    pub template: String,
    #[command(flatten)]
    pub opts: RenderOpts,
}

pub fn run(global: &Global, args: &EvalArgs) -> CliResult {
    let defs = load_checked(global, &args.opts)?;
    let pkg = defs
        .find(&args.target)
        .ok_or_else(|| CliError::user(format!("unknown target `{}`", args.target)))?;
    let out = render_inline(&args.template, &pkg.vars)
        .map_err(|e| CliError::user(format!("template: {e}")))?;
    let mut stdout = std::io::stdout().lock();
    let written = if global.json {
        serde_json::to_string(&out)
            .map_err(anyhow::Error::from)
            .and_then(|s| writeln!(stdout, "{s}").map_err(Into::into))
    } else {
        write!(stdout, "{out}").map_err(Into::into)
    };
    written
        .context("writing to stdout")
        .map_err(CliError::Internal)?;
    Ok(ExitCode::SUCCESS)
}
