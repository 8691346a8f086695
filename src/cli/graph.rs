//! `composer graph TARGET...`: the dependency graph as a text tree, DOT or
//! JSON.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::{CliResult, Global, RenderOpts, load_checked};
use crate::graph::render;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Text,
    Dot,
    Json,
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    /// Stages to show (with everything they depend on).
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Output format (`--json` is the same as `--format json`).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub opts: RenderOpts,
}

pub fn run(global: &Global, args: &GraphArgs) -> CliResult {
    let defs = load_checked(global, &args.opts)?;
    let (graph, plan) = super::resolve_targets(&defs, &args.targets)?;
    let format = if global.json {
        Format::Json
    } else {
        args.format
    };
    let out = match format {
        Format::Text => render::text(&graph, &plan),
        Format::Dot => render::dot(&graph, &plan),
        Format::Json => render::json(&graph, &plan),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
