//! `composer new kmod NAME ...`: writes a module stage and its system
//! extension from the embedded templates (`scaffold::kmod`), then says what
//! it wrote and what to run next.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{CliError, CliResult, Global};
use crate::diag::display_path;
use crate::scaffold::kmod::{KmodRequest, plan};
use crate::scaffold::source::{Checked, ModuleDir};
use crate::scaffold::{Change, ScaffoldError};

#[derive(Args, Debug)]
pub struct NewArgs {
    #[command(subcommand)]
    pub kind: NewKind,
}

#[derive(Subcommand, Debug)]
pub enum NewKind {
    /// An out-of-tree kernel module (stage NAME-pkg) and its system extension (NAME).
    #[command(
        after_help = "Writes (nothing is overwritten; everything is checked first):\n  pkgs/NAME-pkg/pkg.yaml                 the module, built against kernel-build's /src\n  pkgs/Pkgfile                           + NAME_version, NAME_sha256, NAME_sha512 (renovate comment)\n  extensions/drivers/NAME/pkg.yaml       the extension: the module's files under /rootfs\n  extensions/drivers/NAME/vars.yaml      VERSION from the Pkgfile\n  extensions/drivers/NAME/manifest.yaml.tmpl\n  extensions/Pkgfile                     + NAME_VERSION\n(in variable names `-` becomes `_`.) The Pkgfiles keep their comments and layout.\n\nExamples:\n  composer new kmod tenstorrent \\\n    --source https://github.com/tenstorrent/tt-kmd/archive/refs/tags/ttkmd-2.10.0.tar.gz \\\n    --sha256 26a0980688abc7bcc5b89c8c22777e3dead2c59b4244b780d968580eae727d55 \\\n    --sha512 eb36b04dc5416e262fbe5195249a26de1351d8921055d568abc97b6e84d556e959236db8cc3a05aa8c571334d8cd00077e02e2b200ce0c629e2858a4234831d8\n  composer new kmod my-driver --source file:///srv/src/my-driver-1.0.0.tar.gz --sha256 ... --sha512 ... \\\n    --author 'Example Corp' --root-pkgs ../pkgs --root-extensions ../extensions\n  composer new kmod hailort \\\n    --source https://github.com/hailo-ai/hailort-drivers/archive/refs/tags/v4.23.0.tar.gz \\\n    --sha256 ... --sha512 ... --source-file hailort-drivers-4.23.0.tar.gz --module-dir linux/pcie\n\nChecksums: sha256sum FILE, sha512sum FILE (or curl -sL URL | sha256sum).\n\nModule directory (M= of the build and install items): given the archive (--source-file FILE,\n--source-mirror DIR holding DIR/<sha256> or DIR/<file name>, or a file:// source that exists),\ncomposer checks it against both checksums and finds the directories whose Kbuild or Makefile\nassigns obj-m (obj-$(CONFIG_X) when that directory sets CONFIG_X to m), relative to the\narchive's top directory. With several, choose one with --module-dir DIR (checked to exist in\nthe archive). Without an archive, M= is --module-dir or the top of the source, unchecked."
    )]
    Kmod(KmodArgs),
}

#[derive(Args, Debug)]
pub struct KmodArgs {
    /// The extension's name (lowercase, digits, hyphens); the module stage is NAME-pkg.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The module's source archive: https://, http:// or file:// (absolute path).
    #[arg(long, value_name = "URL")]
    pub source: String,
    /// The archive's SHA-256 (64 hex characters).
    #[arg(long, value_name = "HEX")]
    pub sha256: String,
    /// The archive's SHA-512 (128 hex characters).
    #[arg(long, value_name = "HEX")]
    pub sha512: String,
    /// The version (default: the first N.N[.N] in the URL's file name); also the extension's version.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// The extension manifest's author (default: the GitHub owner of the source, else its host).
    #[arg(long, value_name = "TEXT")]
    pub author: Option<String>,
    /// The extension manifest's description.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// The definition root of the module stage (holds the Pkgfile).
    #[arg(long, value_name = "DIR", default_value = "pkgs")]
    pub root_pkgs: PathBuf,
    /// The definition root of the extension (holds the Pkgfile).
    #[arg(long, value_name = "DIR", default_value = "extensions")]
    pub root_extensions: PathBuf,
    /// The source archive on this machine: checked against --sha256/--sha512 and looked into for the module directory.
    #[arg(long, value_name = "FILE")]
    pub source_file: Option<PathBuf>,
    /// A directory holding the source archive as DIR/<sha256> or DIR/<file name of the URL> (as `build --source-mirror`).
    #[arg(long, value_name = "DIR", conflicts_with = "source_file")]
    pub source_mirror: Option<PathBuf>,
    /// The module's directory in the unpacked source (its Kbuild or Makefile), when the archive has several or none is found.
    #[arg(long, value_name = "DIR")]
    pub module_dir: Option<String>,
}

pub fn run(global: &Global, args: &NewArgs) -> CliResult {
    match &args.kind {
        NewKind::Kmod(a) => kmod(global, a),
    }
}

fn kmod(global: &Global, args: &KmodArgs) -> CliResult {
    let request = KmodRequest {
        name: args.name.clone(),
        source: args.source.clone(),
        sha256: args.sha256.clone(),
        sha512: args.sha512.clone(),
        version: args.version.clone(),
        author: args.author.clone(),
        description: args.description.clone(),
        pkgs_root: args.root_pkgs.clone(),
        extensions_root: args.root_extensions.clone(),
        source_file: args.source_file.clone(),
        source_mirror: args.source_mirror.clone(),
        module_dir: args.module_dir.clone(),
    };
    // A template that does not render is composer's fault; anything else
    // (arguments, the trees, the filesystem) is for the user to fix.
    let user = |e: ScaffoldError| match e {
        ScaffoldError::Template { .. } => CliError::Internal(e.into()),
        other => CliError::User(other.into()),
    };
    let kmod = plan(&request).map_err(user)?;
    kmod.plan.apply().map_err(user)?;
    if global.json {
        let changes: Vec<serde_json::Value> = kmod
            .plan
            .changes
            .iter()
            .map(|c| match c {
                Change::Create { path, .. } => serde_json::json!({
                    "created": display_path(path).display().to_string(),
                }),
                Change::Edit { path, added, .. } => serde_json::json!({
                    "edited": display_path(path).display().to_string(),
                    "added": added,
                }),
            })
            .collect();
        let doc = serde_json::json!({
            "stage": kmod.stage,
            "extension": kmod.extension,
            "version": kmod.version,
            "module_dir": kmod.module_dir.dir,
            "module_dir_checked": !matches!(kmod.module_dir.checked, Checked::Unchecked),
            "changes": changes,
        });
        println!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    for c in &kmod.plan.changes {
        match c {
            Change::Create { path, .. } => println!("created {}", display_path(path).display()),
            Change::Edit { path, added, .. } => {
                println!("edited  {} (+ {added})", display_path(path).display())
            }
        }
    }
    let roots =
        if args.root_pkgs == Path::new("pkgs") && args.root_extensions == Path::new("extensions") {
            String::new()
        } else {
            format!(
                " --root {} --root {}",
                args.root_pkgs.display(),
                args.root_extensions.display()
            )
        };
    let pkg_yaml = args.root_pkgs.join(&kmod.stage).join("pkg.yaml");
    println!(
        "\nstage {} (version {}) and extension {} (author {:?}: --author to change it).\n{}\n\nnext:\n  composer{roots} graph {}\n  composer{roots} build kernel {} {}",
        kmod.stage,
        kmod.version,
        kmod.extension,
        kmod.author,
        module_dir_note(&kmod.module_dir, &pkg_yaml),
        kmod.extension,
        kmod.stage,
        kmod.extension,
    );
    Ok(ExitCode::SUCCESS)
}

/// What the output says about the module directory (`M=`).
fn module_dir_note(m: &ModuleDir, pkg_yaml: &Path) -> String {
    let dir = if m.dir == "." {
        "the top of the source".to_string()
    } else {
        m.dir.clone()
    };
    match &m.checked {
        Checked::Found {
            archive,
            declared_in,
        } => format!(
            "The module is built in {dir} (M={}): {declared_in} in {archive} declares it.",
            m.make_path()
        ),
        Checked::Given {
            archive,
            declared_in: Some(f),
        } => format!(
            "The module is built in {dir} (--module-dir, M={}): {f} in {archive} declares it.",
            m.make_path()
        ),
        Checked::Given {
            archive,
            declared_in: None,
        } => format!(
            "The module is built in {dir} (--module-dir, M={}), a directory of {archive} where no Kbuild or Makefile assigns obj-m.",
            m.make_path()
        ),
        Checked::Unchecked => format!(
            "The module is built in {dir} (M={}), NOT checked: no source archive was given to look into (--source-file FILE or --source-mirror DIR). Edit M= in {} if the Kbuild or Makefile that assigns obj-m is elsewhere.",
            m.make_path(),
            pkg_yaml.display()
        ),
    }
}
