//! `composer rules [--list]`: the validation rules `validate-rootfs` runs,
//! with their default severity, the kinds of tree they apply to and what
//! they check.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::{CliError, CliResult, Global};
use crate::validate::{Kind, Severity, rules};

#[derive(Args, Debug)]
pub struct RulesArgs {
    /// List the rules (the default).
    #[arg(long)]
    pub list: bool,
}

#[derive(Serialize)]
struct JsonRule {
    name: &'static str,
    severity: Severity,
    applies_to: &'static [Kind],
    description: &'static str,
}

fn applies(kinds: &[Kind]) -> String {
    if kinds.len() == Kind::ALL.len() {
        "all".to_string()
    } else {
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
    }
}

pub fn run(global: &Global, _args: &RulesArgs) -> CliResult {
    if global.json {
        let all: Vec<JsonRule> = rules()
            .iter()
            .map(|r| JsonRule {
                name: r.name(),
                severity: r.severity(),
                applies_to: r.applies_to(),
                description: r.description(),
            })
            .collect();
        let text = serde_json::to_string_pretty(&all)
            .map_err(|e| CliError::Internal(anyhow::anyhow!("writing JSON: {e}")))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 4]> = rules()
        .iter()
        .map(|r| {
            [
                r.name().to_string(),
                r.severity().to_string(),
                applies(r.applies_to()),
                r.description().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "SEVERITY", "APPLIES-TO", "DESCRIPTION"].map(String::from);
    let width = |i: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|r| r[i].len())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for r in std::iter::once(&header).chain(&rows) {
        println!("{:w0$}  {:w1$}  {:w2$}  {}", r[0], r[1], r[2], r[3]);
    }
    Ok(ExitCode::SUCCESS)
}
