//! `composer render TARGET`: the target's pkg.yaml after template
//! expansion, or one of its `*.tmpl` files with `--template`.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::{CliError, CliResult, Global, RenderOpts, load_checked};
use crate::diag::suggest;

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// The stage whose pkg.yaml to print.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// Print this template of the package instead (e.g. `manifest.yaml`).
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    #[command(flatten)]
    pub opts: RenderOpts,
}

pub fn run(global: &Global, args: &RenderArgs) -> CliResult {
    let defs = load_checked(global, &args.opts)?;
    let Some(pkg) = defs.find(&args.target) else {
        let names = defs.packages.iter().map(|p| p.pkg.name.value.as_str());
        let hint = suggest(&args.target, names)
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        return Err(CliError::user(format!(
            "unknown target `{}`{hint}",
            args.target
        )));
    };
    match &args.template {
        None if global.json => {
            let text = serde_json::to_string_pretty(&pkg.pkg)
                .map_err(|e| CliError::Internal(anyhow::anyhow!("writing JSON: {e}")))?;
            println!("{text}");
        }
        None => print!("{}", pkg.rendered),
        Some(name) => {
            let wanted = Path::new(name.strip_suffix(".tmpl").unwrap_or(name));
            let Some((_, text)) = pkg.templates.iter().find(|(p, _)| p == wanted) else {
                let have: Vec<String> = pkg
                    .templates
                    .iter()
                    .map(|(p, _)| p.display().to_string())
                    .collect();
                return Err(CliError::user(format!(
                    "`{}` has no template `{name}`; it has: {}",
                    args.target,
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                )));
            };
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
