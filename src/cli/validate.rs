//! `composer validate`: load every root for every platform, resolve the
//! whole graph, print every problem; exit 1 when there is an error (or a
//! warning, with `--strict`).

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::{
    CliError, CliResult, Global, absolute_roots, parse_build_arg, parse_platform, print_report,
};
use crate::defs::{LoadOptions, Platform, load};
use crate::diag::{Report, display_path, plural};
use crate::graph::Graph;

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Only this platform (default: every platform).
    #[arg(long, value_parser = parse_platform)]
    pub platform: Option<Platform>,
    /// A build argument, visible to templates as `.BUILD_ARG_<NAME>`.
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_build_arg)]
    pub build_args: Vec<(String, String)>,
    /// The kernel release templates see as `.KERNEL_FULL_VERSION`.
    #[arg(long, value_name = "RELEASE", value_parser = super::parse_kernel_release)]
    pub kernel_release: Option<String>,
    /// Treat warnings (such as undefined template variables) as errors.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Serialize)]
struct JsonDiag {
    severity: crate::diag::Severity,
    file: String,
    line: usize,
    col: usize,
    field: String,
    message: String,
    hint: Option<String>,
}

#[derive(Serialize)]
struct JsonReport {
    ok: bool,
    packages: usize,
    errors: usize,
    warnings: usize,
    diagnostics: Vec<JsonDiag>,
}

pub fn run(global: &Global, args: &ValidateArgs) -> CliResult {
    let roots = absolute_roots(global)?;
    let platforms: Vec<Platform> = match args.platform {
        Some(p) => vec![p],
        None => Platform::ALL.to_vec(),
    };
    let mut report = Report::new();
    let mut packages = 0;
    for platform in platforms {
        let started = std::time::Instant::now();
        let (defs, mut r) = load(&LoadOptions {
            roots: roots.clone(),
            platform,
            build_args: args.build_args.clone(),
            kernel_release: args.kernel_release.clone(),
        });
        super::verbose_summary(global, &defs, started);
        let graph = Graph::new(&defs, &mut r);
        graph.check_all(&mut r);
        packages = packages.max(defs.packages.len());
        report.extend(r);
    }
    if args.strict {
        report.escalate_warnings();
    }
    let report = report.sorted();
    if global.json {
        let doc = JsonReport {
            ok: !report.has_errors(),
            packages,
            errors: report.errors(),
            warnings: report.warnings(),
            diagnostics: report
                .iter()
                .map(|d| JsonDiag {
                    severity: d.severity,
                    file: display_path(&d.span.file).display().to_string(),
                    line: d.span.line,
                    col: d.span.col,
                    field: d.field.clone(),
                    message: d.message.clone(),
                    hint: d.hint.clone(),
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| CliError::Internal(anyhow::anyhow!("writing JSON: {e}")))?;
        println!("{text}");
    } else {
        print_report(&report);
        eprintln!(
            "{} in {}: {}",
            plural(packages, "package"),
            plural(roots.len(), "root"),
            report.summary()
        );
    }
    Ok(if report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
