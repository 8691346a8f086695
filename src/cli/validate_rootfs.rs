//! `composer validate-rootfs PATH`: runs the validation rules over a root
//! filesystem, an extension image or a KMM kmod image, prints every
//! finding (`error[rule]: /path: message`) and a summary; exit 1 on an
//! error finding (with `--strict`, on a warning too).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::{CliError, CliResult, Global};
use crate::sign::verify::Trusted;
use crate::validate::{self, Context, Finding, KernelTree, Kind, Selection, Severity};

#[derive(Args, Debug)]
pub struct ValidateRootfsArgs {
    /// The tree: an extension image (manifest.yaml + rootfs/), a root
    /// filesystem, or a KMM kmod image.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// What PATH is: extension, rootfs or kmod. Default: extension when
    /// PATH holds a manifest.yaml, else rootfs.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    pub kind: Option<Kind>,
    /// Run only these rules (comma-separated; see `composer rules`).
    #[arg(long = "rules", value_name = "RULE,...", value_delimiter = ',')]
    pub rules: Vec<String>,
    /// Do not run this rule. Repeatable.
    #[arg(long = "skip", value_name = "RULE")]
    pub skip: Vec<String>,
    /// A certificate trusted to sign modules (PEM or DER). Repeatable.
    #[arg(long = "cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,
    /// Trust the certificates built into this kernel image.
    #[arg(long, value_name = "VMLINUZ")]
    pub kernel: Option<PathBuf>,
    /// The package the tree was built from: an extension's metadata.name
    /// must equal it.
    #[arg(long, value_name = "NAME")]
    pub package: Option<String>,
    /// Check the extension's compatibility.talos.version against this
    /// Talos version.
    #[arg(long = "talos-version", value_name = "V")]
    pub talos_version: Option<String>,
    /// Check modules against this kernel build tree (a built kernel tree,
    /// or Debian's /usr/src/linux-headers-<release>; or a directory holding
    /// such trees, searched 4 levels deep): the modules of its release must
    /// carry its exact vermagic and use only symbols its Module.symvers or
    /// a module of the tree exports. Repeatable, one per release.
    #[arg(long = "kernel-tree", value_name = "DIR")]
    pub kernel_trees: Vec<PathBuf>,
    /// Module dependencies on modules the tree does not ship are fine (the
    /// node's own modules). Implied for a kmod image with a `host` symlink.
    #[arg(long)]
    pub allow_in_tree_deps: bool,
    /// Fail on warnings too.
    #[arg(long)]
    pub strict: bool,
}

/// Whether two paths name the same directory (a tree given twice is fine).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
}

#[derive(Serialize)]
struct JsonReport<'a> {
    ok: bool,
    path: String,
    kind: Kind,
    errors: usize,
    warnings: usize,
    rules_run: &'a [&'static str],
    findings: &'a [Finding],
}

/// `--kernel-tree` directories into the context; two different trees for
/// one release are refused.
fn add_kernel_trees(ctx: &mut Context, dirs: &[PathBuf]) -> Result<(), CliError> {
    for dir in dirs {
        for tree in KernelTree::read_all(dir).map_err(CliError::user)? {
            let path = tree.dir.clone();
            if let Some(before) = ctx.add_kernel_tree(tree)
                && !same_dir(&before.dir, &path)
            {
                return Err(CliError::user(format!(
                    "--kernel-tree: {} and {} are both for kernel {}: give one",
                    before.dir.display(),
                    path.display(),
                    before.release
                )));
            }
        }
    }
    Ok(())
}

pub fn run(global: &Global, args: &ValidateRootfsArgs) -> CliResult {
    let kind = args.kind.unwrap_or_else(|| Kind::detect(&args.path));
    let mut trusted = Vec::new();
    for c in &args.certs {
        trusted.extend(Trusted::read_file(c).map_err(CliError::user)?);
    }
    if let Some(k) = &args.kernel {
        trusted.extend(Trusted::read_kernel(k).map_err(CliError::user)?);
    }
    let mut ctx = Context {
        kind,
        package: args.package.clone(),
        trusted,
        allow_in_tree_deps: args.allow_in_tree_deps
            || (kind == Kind::KmodImage && validate::modules::kmm_host_link(&args.path)),
        secret_patterns: Vec::new(),
        talos_version: args.talos_version.clone(),
        kernel_trees: Default::default(),
    };
    add_kernel_trees(&mut ctx, &args.kernel_trees)?;
    let sel = Selection {
        only: args.rules.clone(),
        skip: args.skip.clone(),
    };
    let report = validate::validate(&args.path, &ctx, &sel).map_err(CliError::user)?;
    let failed = report.has_errors() || (args.strict && report.has_warnings());
    if global.json {
        let doc = JsonReport {
            ok: !failed,
            path: args.path.display().to_string(),
            kind,
            errors: report.errors().count(),
            warnings: report.warnings().count(),
            rules_run: &report.rules_run,
            findings: &report.findings,
        };
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| CliError::Internal(anyhow::anyhow!("writing JSON: {e}")))?;
        println!("{text}");
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        for f in &report.findings {
            if color {
                let code = match f.severity {
                    Severity::Error => "1;31",
                    Severity::Warning => "1;33",
                };
                println!(
                    "\x1b[{code}m{}\x1b[0m[{}]: {}: {}",
                    f.severity, f.rule, f.path, f.message
                );
            } else {
                println!("{f}");
            }
        }
        eprintln!(
            "{} ({kind}): {}{}",
            crate::diag::display_path(&args.path).display(),
            report.summary(),
            if args.strict && report.has_warnings() && !report.has_errors() {
                " (--strict: warnings fail)"
            } else {
                ""
            }
        );
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
