//! `composer fetch TARGET...`: every source of every stage the targets
//! need, fetched into the download cache and checked (sha256 and sha512),
//! whether the stages are cached or not; with `--to DIR`, also copied into
//! DIR as a `--source-mirror` directory. One line per source, a summary,
//! and when any source cannot be had, an error naming each one (nothing is
//! copied then).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::{CliError, CliResult, Global, RenderOpts, load_checked};
use crate::diag::plural;
use crate::exec::cache::Cache;
use crate::exec::prefetch::{self, Fetched, Seeded};
use crate::exec::sources::{Origin, SourceOptions};

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Stages whose sources (and their dependencies' sources) to fetch.
    #[arg(value_name = "TARGET", required = true)]
    pub targets: Vec<String>,
    /// Also copy every source into DIR as a --source-mirror directory
    /// (DIR/<sha256> and DIR/<file name>), for machines without network.
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    #[command(flatten)]
    pub sources: super::build::SourceArgs,
    #[command(flatten)]
    pub opts: RenderOpts,
}

pub fn run(global: &Global, args: &FetchArgs) -> CliResult {
    let defs = load_checked(global, &args.opts)?;
    let (graph, plan) = super::resolve_targets(&defs, &args.targets)?;
    let packages: Vec<_> = plan.order.iter().filter_map(|n| graph.get(n)).collect();
    let wanted = prefetch::wanted(packages.iter().copied());

    let cache_dir = args.sources.cache_dir();
    let cache = Cache::open(&cache_dir, &mut || {
        eprintln!(
            "waiting for another composer using the cache {}",
            cache_dir.display()
        )
    })
    .map_err(|e| CliError::User(e.into()))?;
    let opts = SourceOptions {
        dir: cache.downloads(),
        offline: args.sources.offline,
        mirrors: args.sources.mirrors.clone(),
    };
    let what = format!("fetching the sources of {}", args.targets.join(" "));
    let fetched = prefetch::fetch_all(&wanted, &opts, &mut |_| {})
        .context(what.clone())
        .map_err(CliError::User)?;
    let seeded = match &args.to {
        Some(dir) => Some(
            prefetch::seed_mirror(&fetched, dir)
                .context(what)
                .map_err(CliError::User)?,
        ),
        None => None,
    };
    print(global, args, &fetched, seeded.as_deref(), packages.len());
    Ok(ExitCode::SUCCESS)
}

/// One line per source on stdout (or JSON), the summary on stderr.
fn print(
    global: &Global,
    args: &FetchArgs,
    fetched: &[Fetched],
    seeded: Option<&[Seeded]>,
    stages: usize,
) {
    let seeded_of = |i: usize| seeded.and_then(|s| s.get(i));
    if global.json {
        let items: Vec<serde_json::Value> = fetched
            .iter()
            .enumerate()
            .map(|(i, f)| {
                serde_json::json!({
                    "url": f.url,
                    "sha256": f.sha256,
                    "stages": f.stages,
                    "status": status(f, seeded_of(i)),
                    "cached": f.origin == Origin::Cached,
                    "from": match &f.origin { Origin::Fetched(u) => Some(u), Origin::Cached => None },
                    "path": f.path,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
    } else {
        for (i, f) in fetched.iter().enumerate() {
            println!("{}", line(f, seeded_of(i)));
        }
    }
    let count = |o: &Origin| fetched.iter().filter(|f| &f.origin == o).count();
    let cached = count(&Origin::Cached);
    let mut summary = format!(
        "{} of {}: {} fetched, {cached} cached, every one checked (sha256 and sha512)",
        plural(fetched.len(), "source"),
        plural(stages, "stage"),
        fetched.len() - cached,
    );
    if let (Some(dir), Some(seeded)) = (&args.to, seeded) {
        let copied = seeded.iter().filter(|s| s.wrote()).count();
        summary.push_str(&format!(
            "; {copied} copied to {}, {} there already",
            dir.display(),
            seeded.len() - copied
        ));
    }
    eprintln!("{summary}");
}

/// `copied` when `--to` wrote the source, else how it came into the cache.
fn status(f: &Fetched, seeded: Option<&Seeded>) -> &'static str {
    match (seeded, &f.origin) {
        (Some(s), _) if s.wrote() => "copied",
        (_, Origin::Fetched(_)) => "fetched",
        (_, Origin::Cached) => "cached",
    }
}

fn line(f: &Fetched, seeded: Option<&Seeded>) -> String {
    let status = status(f, seeded);
    let mut out = format!("{status:<8} {}  ({})", f.url, f.stages.join(", "));
    match (&f.origin, status) {
        (Origin::Fetched(from), "copied") => out.push_str(&format!("  fetched from {from}")),
        (Origin::Cached, "copied") => out.push_str("  from the download cache"),
        (Origin::Fetched(from), _) if from != &f.url => out.push_str(&format!("  from {from}")),
        _ => {}
    }
    if let Some(Seeded::HashOnly { name_taken_by, .. }) = seeded {
        out.push_str(&format!(
            "; as {} only: {} is {name_taken_by}",
            f.sha256, f.file_name
        ));
    }
    if seeded.is_some_and(|s| !s.wrote()) {
        out.push_str("  (in the mirror already)");
    }
    out
}
