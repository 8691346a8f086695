//! `composer sbom TARGET`: the SPDX documents a target's output carries —
//! its own `sbom:` steps' and those merged in from the stages it is built
//! from — rendered from the definitions without building, byte for byte
//! what a build writes (same `--build-arg`s and SOURCE_DATE_EPOCH).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::build::source_date_epoch;
use super::{CliError, CliResult, Global, RenderOpts, load_checked};
use crate::exec::sbom::{self, Carried};
use crate::graph::Graph;

#[derive(Args, Debug)]
pub struct SbomArgs {
    /// The stage whose documents to print.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// Write the document to FILE instead of standard output. One document
    /// only: when the target carries several, choose it with --stage, and
    /// with --step too when that stage has several `sbom:` steps.
    #[arg(short = 'o', long, value_name = "FILE", conflicts_with = "list")]
    pub output: Option<PathBuf>,
    /// Only the documents written by this stage.
    #[arg(long, value_name = "STAGE")]
    pub stage: Option<String>,
    /// Only the document of this step of --stage: N counts every step of
    /// the stage's pkg.yaml from 1, those without `sbom:` too (the step
    /// --list shows).
    #[arg(long, value_name = "N", requires = "stage", value_parser = clap::value_parser!(u64).range(1..))]
    pub step: Option<u64>,
    /// List the documents (path in the target's output, stage, step, name)
    /// instead of printing them; with --json, as JSON.
    #[arg(long)]
    pub list: bool,
    #[command(flatten)]
    pub opts: RenderOpts,
}

pub fn run(global: &Global, args: &SbomArgs) -> CliResult {
    let defs = load_checked(global, &args.opts)?;
    let epoch = source_date_epoch(&args.opts.build_args)?;
    let (graph, _) = super::resolve_targets(&defs, std::slice::from_ref(&args.target))?;
    let target = graph
        .get(&args.target)
        .ok_or_else(|| CliError::user(format!("unknown target `{}`", args.target)))?;
    let all = sbom::carried(&graph, target);
    if all.is_empty() {
        return Err(CliError::user(format!(
            "`{}` carries no SBOM: no document of an `sbom:` step, its own or one of the stages merged into it, reaches its output through `finalize`",
            args.target
        )));
    }
    let chosen: Vec<Carried> = all
        .iter()
        .filter(|c| args.stage.as_ref().is_none_or(|s| &c.stage == s))
        .filter(|c| args.step.is_none_or(|n| c.step as u64 == n))
        .cloned()
        .collect();
    if chosen.is_empty() {
        let step = args
            .step
            .map(|n| format!("step {n} of "))
            .unwrap_or_default();
        return Err(CliError::user(format!(
            "`{}` carries no document of {step}stage `{}`; it carries: {}",
            args.target,
            args.stage.as_deref().unwrap_or_default(),
            describe(&all)
        )));
    }
    let mut docs = Vec::new();
    for c in &chosen {
        docs.push((c, render(&graph, c, epoch)?));
    }
    if args.list {
        return list(global, &docs);
    }
    match &args.output {
        Some(file) => {
            // One step's document carried to several paths is one document.
            let (first, (_, bytes)) = &docs[0];
            if docs
                .iter()
                .any(|(c, _)| (&c.stage, c.step) != (&first.stage, first.step))
            {
                return Err(CliError::user(format!(
                    "`{}` carries {} documents ({}); choose one with --stage STAGE --step N",
                    args.target,
                    docs.len(),
                    describe(&chosen)
                )));
            }
            write_atomically(file, bytes)?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            for (c, (_, bytes)) in &docs {
                if docs.len() > 1 {
                    eprintln!("{} (stage {}, step {})", c.path, c.stage, c.step);
                }
                out.write_all(bytes)
                    .map_err(|e| CliError::Internal(anyhow::anyhow!("writing: {e}")))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The document `c` names, and the package name and version it describes.
fn render(
    graph: &Graph<'_>,
    c: &Carried,
    epoch: Option<i64>,
) -> Result<(String, Vec<u8>), CliError> {
    let stage = graph
        .get(&c.stage)
        .ok_or_else(|| CliError::Internal(anyhow::anyhow!("stage {} vanished", c.stage)))?;
    let docs = sbom::documents(stage, epoch).map_err(|e| CliError::User(e.into()))?;
    let doc = docs
        .into_iter()
        .find(|d| d.step == c.step)
        .ok_or_else(|| CliError::Internal(anyhow::anyhow!("{}: no step {}", c.stage, c.step)))?;
    let name = if doc.sbom.name.is_empty() {
        &c.stage
    } else {
        &doc.sbom.name
    };
    let label = match doc.sbom.version.as_str() {
        "" => name.clone(),
        v => format!("{name} {v}"),
    };
    Ok((label, doc.bytes))
}

fn list(global: &Global, docs: &[(&Carried, (String, Vec<u8>))]) -> CliResult {
    if global.json {
        let rows: Vec<serde_json::Value> = docs
            .iter()
            .map(|(c, (label, _))| {
                serde_json::json!({"path": c.path, "stage": c.stage, "step": c.step, "package": label})
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for (c, (label, _)) in docs {
            println!("{}\t{}\t{}\t{label}", c.path, c.stage, c.step);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(docs: &[Carried]) -> String {
    docs.iter()
        .map(|c| format!("{} from --stage {} --step {}", c.path, c.stage, c.step))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `file` whole or not at all.
fn write_atomically(file: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = |e: std::io::Error| CliError::user(format!("writing {}: {e}", file.display()));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(fail)?;
    tmp.persist(file).map_err(|e| fail(e.error))?;
    Ok(())
}
