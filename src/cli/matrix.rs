//! `composer matrix TARGET...`: the build matrix as JSON for GitHub
//! Actions' `strategy.matrix` (`{"include": [cell, ...]}`), one cell per
//! platform and kernel, and per kernel release with `--kernel-release`
//! (each release loaded with its own `KERNEL_FULL_VERSION`); the grouping
//! is `graph::matrix`'s.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::{
    CliError, CliResult, Global, RenderOpts, load_checked, parse_build_arg, parse_platform,
};
use crate::defs::Platform;
use crate::graph::{Graph, Matrix, matrix};

#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Targets to build (each lands in exactly one cell per platform).
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Platforms, comma-separated or repeated. Default: linux/amd64.
    #[arg(
        long = "platform",
        value_name = "PLATFORM,...",
        value_delimiter = ',',
        value_parser = parse_platform
    )]
    pub platforms: Vec<Platform>,
    /// A build argument, visible to templates as `.BUILD_ARG_<NAME>`.
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_build_arg)]
    pub build_args: Vec<(String, String)>,
    /// Kernel releases to build for (modules for kernels composer does not
    /// build), comma-separated or repeated: one cell per platform and
    /// release, each with `kernel_release` set, which `composer build
    /// --kernel-release` takes.
    #[arg(
        long = "kernel-release",
        value_name = "RELEASE,...",
        value_delimiter = ',',
        value_parser = super::parse_kernel_release
    )]
    pub kernel_releases: Vec<String>,
    /// Treat warnings (such as undefined template variables) as errors.
    #[arg(long)]
    pub strict: bool,
    /// Indent the JSON (default: one line, as `$GITHUB_OUTPUT` needs).
    #[arg(long)]
    pub pretty: bool,
}

pub fn run(global: &Global, args: &MatrixArgs) -> CliResult {
    let platforms: BTreeSet<Platform> = if args.platforms.is_empty() {
        BTreeSet::from([Platform::LinuxAmd64])
    } else {
        args.platforms.iter().copied().collect()
    };
    let releases: Vec<Option<String>> = if args.kernel_releases.is_empty() {
        vec![None]
    } else {
        let unique: BTreeSet<&String> = args.kernel_releases.iter().collect();
        unique.into_iter().cloned().map(Some).collect()
    };
    let mut out = Matrix::default();
    for platform in platforms {
        for release in &releases {
            let opts = RenderOpts {
                platform,
                build_args: args.build_args.clone(),
                kernel_release: release.clone(),
                strict: args.strict,
            };
            let what = match release {
                Some(r) => format!("{platform}, kernel release {r}"),
                None => platform.to_string(),
            };
            let defs = load_checked(global, &opts).map_err(|e| match e {
                CliError::User(e) => CliError::User(e.context(format!("loading for {what}"))),
                other => other,
            })?;
            let mut report = crate::diag::Report::new();
            let graph = Graph::new(&defs, &mut report);
            let cells = matrix::cells(&graph, &args.targets)
                .with_context(|| format!("resolving the targets for {what}"))
                .map_err(CliError::User)?;
            out.extend(matrix::for_release(cells, release.as_deref()));
        }
    }
    print!("{}", out.to_json(args.pretty));
    Ok(ExitCode::SUCCESS)
}
