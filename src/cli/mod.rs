//! The command line: argument parsing (clap derive) and one file per
//! command. No logic beyond turning arguments into library calls and
//! results into text; errors are returned, never printed here, except the
//! diagnostics list a command exists to print.

mod build;
mod cache;
mod eval;
mod existing;
mod fetch;
mod foreign;
mod graph;
mod image_installer;
mod images;
mod kmod;
mod matrix;
mod new;
mod pack;
mod progress;
mod render;
mod rules;
mod sbom;
mod validate;
mod validate_rootfs;
mod verify;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::defs::{Definitions, LoadOptions, Platform, load};
use crate::diag::{Report, Severity};

/// How a command failed: the user's input (exit 1) or composer itself (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    User(anyhow::Error),
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl CliError {
    pub fn user(msg: impl std::fmt::Display) -> Self {
        CliError::User(anyhow::anyhow!("{msg}"))
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::User(_) => ExitCode::from(1),
            CliError::Internal(_) => ExitCode::from(2),
        }
    }
}

pub type CliResult = Result<ExitCode, CliError>;

#[derive(Parser, Debug)]
#[command(
    name = "composer",
    version,
    about = "Build custom kernels, signed out-of-tree modules and Talos system extensions from bldr definitions",
    long_about = None,
    after_help = "Examples:\n  composer validate\n  composer graph kernel hailort --format dot | dot -Tsvg > graph.svg\n  composer render hailort-pkg --platform linux/arm64\n  composer eval --target hailort '{{ .VERSION }}'\n\nExit codes: 0 ok, 1 problem in the input, 2 internal error. NO_COLOR disables colour."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// A definition root (a directory with a Pkgfile and pkg.yaml files).
    /// Repeat for several roots in one graph. Default: `pkgs` and
    /// `extensions` when they exist in the current directory, else `.`.
    /// For `composer kmod`: where the node's / is (default /).
    #[arg(long = "root", global = true, value_name = "DIR")]
    pub roots: Vec<PathBuf>,
    /// More detail (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Print data as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Options that pick the variables a tree is rendered with.
#[derive(Args, Debug, Clone)]
pub struct RenderOpts {
    /// Target platform.
    #[arg(long, default_value = "linux/amd64", value_parser = parse_platform)]
    pub platform: Platform,
    /// A build argument, visible to templates as `.BUILD_ARG_<NAME>`.
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_build_arg)]
    pub build_args: Vec<(String, String)>,
    /// The kernel release to build for, as `uname -r` prints it
    /// (`6.1.0-57-cloud-amd64`): templates see it as `.KERNEL_FULL_VERSION`
    /// (KMM's name), for modules built against a kernel composer does not
    /// build.
    #[arg(long, value_name = "RELEASE", value_parser = parse_kernel_release)]
    pub kernel_release: Option<String>,
    /// Treat warnings (such as undefined template variables) as errors.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load every definition for every platform and print all problems.
    #[command(
        after_help = "Examples:\n  composer validate\n  composer validate --root ../pkgs --strict\n  composer validate --json | jq '.diagnostics[]'"
    )]
    Validate(validate::ValidateArgs),
    /// Show the dependency graph of targets (text tree, DOT or JSON).
    #[command(
        after_help = "Examples:\n  composer graph kernel\n  composer graph hailort --format dot | dot -Tpng > graph.png\n  composer graph kernel hailort --format json"
    )]
    Graph(graph::GraphArgs),
    /// Print the build matrix as JSON for GitHub Actions: one cell per platform and kernel, with the targets built together.
    #[command(
        after_help = "Targets that depend on the same kernel build share its signing session, so they\nmust be built by one `composer build`: they go into one cell. Targets that need\nno kernel share one cell per platform. Each cell has name, platform, arch,\nkernel (a stage name or null) and targets (space-separated).\n\nExamples:\n  composer matrix kernel hello-module hello\n  composer matrix --platform linux/amd64,linux/arm64 kernel hello-module hello --pretty\n  echo \"matrix=$(composer matrix --platform amd64,arm64 kernel hello)\" >> \"$GITHUB_OUTPUT\"\n\n  # in the workflow:\n  strategy:\n    matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}\n  steps:\n    - run: composer build --platform ${{ matrix.platform }} ${{ matrix.targets }}"
    )]
    Matrix(matrix::MatrixArgs),
    /// Write new definitions from composer's templates (`composer new kmod NAME`: a kernel module and its extension).
    #[command(
        after_help = "Examples:\n  composer new kmod my-driver --source https://github.com/example/my-driver/archive/refs/tags/v1.0.0.tar.gz --sha256 HEX --sha512 HEX\n  composer new kmod --help"
    )]
    New(new::NewArgs),
    /// Print a target's pkg.yaml after template expansion, as bldr parses it.
    #[command(
        after_help = "Examples:\n  composer render kernel-build\n  composer render hailort --template manifest.yaml\n  composer render kernel --platform linux/arm64 --build-arg KERNEL_TARGET=olddefconfig"
    )]
    Render(render::RenderArgs),
    /// Render a template in a target's variable context (like `bldr eval`).
    #[command(
        after_help = "Examples:\n  composer eval --target hailort '{{ .VERSION }}'\n  TAG=$(composer eval --target kernel '{{ .linux_version }}')"
    )]
    Eval(eval::EvalArgs),
    /// Build targets in sandboxes, with a content-addressed cache; each target's filesystem lands in _out/<target>/.
    #[command(
        after_help = "Examples:\n  composer build kernel hello-module\n  composer build kernel --build-arg LINUX_SOURCE_SHA256=... --build-arg LINUX_SOURCE_SHA512=...\n  composer build -v hello-module            # explain every cache miss\n  composer build --offline --source-mirror /srv/sources hailort-pkg\n  composer build kernel hello-module hello          # + _out/images/hello, the extension image (validated)\n  composer build hello-module --format kmm          # a KMM kmod image in _out/images/hello-module\n  composer build hello --push 127.0.0.1:5000/composer --insecure\n  composer build --kernel-release 6.1.0-57-cloud-amd64 $(cat debs/6.1.0-57-cloud-amd64/build-args) \\\n      --format kmm --signing-key mok.pem hello-kmod   # for Debian's kernel (scripts/debian-kernel.sh)\n  composer build my-kmod --format kmm --kernel-release 6.1.0-57-cloud-amd64 \\\n      --push registry.example.com/kmods --skip-existing   # builds only if my-kmod:6.1.0-57-cloud-amd64 is missing\n  composer build hello --push 127.0.0.1:5000/composer --insecure --overwrite-existing\n\nA push never replaces a tag that names another image unless --overwrite-existing:\nevery tag is checked first, and the build fails before anything is written or pushed.\n\nLogs: _out/logs/<stage>/<step>-<phase>.log. Needs bubblewrap (apt-get install bubblewrap)."
    )]
    Build(build::BuildArgs),
    /// Fetch and check every source the targets need (into the download cache; with --to, into a mirror directory too).
    #[command(
        after_help = "Every source of every stage the targets need, cached stages included, is fetched\ninto the download cache and checked (sha256 and sha512); when any cannot be had, all of\nthem are named (stage, URL, reason) and the exit code is 1. `composer build` does the\nsame for the stages it runs before starting the first one.\n\nExamples:\n  composer fetch kernel hailort-pkg\n  composer fetch kernel hailort-pkg --to /srv/sources      # seed a mirror for an air-gapped site\n  composer build --offline --source-mirror /srv/sources kernel hailort-pkg\n  composer fetch --offline hailort-pkg                     # is everything here to build offline?\n  composer fetch --platform linux/arm64 --build-arg LINUX_SOURCE_SHA256=... --build-arg LINUX_SOURCE_SHA512=... kernel"
    )]
    Fetch(fetch::FetchArgs),
    /// Check that every kernel module is signed by a trusted key (cryptographically).
    #[command(
        after_help = "Examples:\n  composer verify _out/hello-module --kernel _out/kernel/boot/vmlinuz\n  composer verify _out/hello-module --cert _out/kernel/boot/signing_key.x509\n  composer verify /lib/modules/$(uname -r) --cert cert.pem -q\n\nExit 1 when any module is unsigned, signed by another key, or changed after signing."
    )]
    Verify(verify::VerifyArgs),
    /// Check a root filesystem, extension image or kmod image against the validation rules.
    #[command(
        after_help = "Examples:\n  composer validate-rootfs _out/hello-ext --cert _out/kernel/boot/signing_key.x509 --package hello\n  composer validate-rootfs _out/kernel --kind rootfs --rules fhs,no-secrets\n  composer validate-rootfs _out/hello-kmod --kind kmod --kernel _out/kernel/boot/vmlinuz\n  composer validate-rootfs _out/hello-kmod --kind kmod --kernel-tree /usr/src/linux-headers-6.1.0-57-cloud-amd64\n  composer validate-rootfs ext/ --skip modules-depends --talos-version v1.9.0 --strict\n  composer validate-rootfs ext/ --json | jq '.findings[] | select(.rule == \"fhs\")'\n\nExit 1 on any error finding (with --strict, on any warning too). Rules: composer rules."
    )]
    ValidateRootfs(validate_rootfs::ValidateRootfsArgs),
    /// List the validation rules: name, severity, kinds of tree, what each checks.
    #[command(
        after_help = "Examples:\n  composer rules\n  composer rules --list --json | jq -r '.[].name'"
    )]
    Rules(rules::RulesArgs),
    /// Print the SPDX 2.3 documents (SBOMs) a target carries, as a build writes them, without building.
    #[command(
        after_help = "A step's `sbom:` (outputPath, name, version, cpes, purl, licenses, customLicenses) makes\nthe build write an SPDX document at outputPath in the stage's filesystem; finalize and\ndependency merges carry it into the outputs built from the stage (an extension that\nmerges a module stage at /rootfs carries its document under /rootfs/usr/local/share/spdx).\nThis prints those documents from the definitions: the same bytes the build writes, given\nthe same --build-arg and SOURCE_DATE_EPOCH. Several documents are printed one after another;\n--list shows each one's stage and step, which --stage and --step choose (a step counts\nevery step of the stage's pkg.yaml from 1).\n\nExamples:\n  composer sbom hailort-pkg\n  composer sbom hello --list\n  composer sbom hailort --stage hailort-pkg -o hailort.spdx.json\n  composer sbom my-ext --stage my-pkg --step 2 -o my-pkg-firmware.spdx.json\n  SOURCE_DATE_EPOCH=1700000000 composer sbom hello-module | jq '.packages[0].licenseDeclared'"
    )]
    Sbom(sbom::SbomArgs),
    /// Inspect, prune or verify the build cache.
    #[command(
        after_help = "Examples:\n  composer cache ls\n  composer cache prune --older-than 7\n  composer cache verify --repair"
    )]
    Cache(cache::CacheArgs),
    /// Pack directories into an OCI image (one platform or a multi-platform index).
    #[command(
        after_help = "Examples:\n  composer pack _out/hello -o oci:images/hello:1.0.0\n  composer pack rootfs/ --compression zstd -o oci-archive:hello.tar\n  composer pack rootfs/ -o docker-archive:hello.tar:composer/hello:1.0.0   # podman load -i hello.tar\n  composer pack --rootfs linux/amd64=out-amd64 --rootfs linux/arm64=out-arm64 -o oci:images/multi:v1\n\nDigests are reproducible: entries sorted, owned by 0:0, mtimes = SOURCE_DATE_EPOCH (else 0)."
    )]
    Pack(pack::PackArgs),
    /// Fold system extensions into a base installer image: a new installer image (docker-archive).
    #[command(
        after_help = "Examples:\n  composer image-installer --base-installer-image oci:_out/images/installer-base:6.1 \\\n      --system-extension-image oci:_out/images/hello:1.0.0\n  composer image-installer --arch amd64 --base-installer-image 127.0.0.1:5000/installer-base:6.1 \\\n      --system-extension-image 127.0.0.1:5000/hello:1.0.0 --insecure -o installer.tar\n  composer image-installer ... --talos-version v1.9.0 --push 127.0.0.1:5000/installer:v1 --insecure\n  composer image-installer ... --push 127.0.0.1:5000/installer:v1 --insecure --overwrite-existing\n\nWrites _out/installer-<arch>.tar (podman load -i / docker load -i). Each extension is validated\n(module signatures against the base kernel's certificates); nothing is written when one fails.\nNeeds squashfs-tools and kmod (depmod). SOURCE_DATE_EPOCH sets every timestamp."
    )]
    ImageInstaller(image_installer::ImageInstallerArgs),
    /// On the node: install module images for the running kernel (verified first), load and unload their modules in order, remove them, show their state, write a boot unit.
    #[command(
        after_help = "Examples:\n  composer kmod install 'registry.example.com/kmods/hello-kmod:${KERNEL_FULL_VERSION}' --load\n  composer kmod install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' --cert /etc/mok.pem\n  composer kmod load hello_user\n  composer kmod unload hello_pcie\n  composer kmod status --json\n  composer kmod remove hello-kmod\n  composer kmod unit hello 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' -o /etc/systemd/system/\n  composer kmod install --help"
    )]
    Kmod(kmod::KmodArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> CliResult {
    let g = &cli.global;
    match &cli.command {
        Command::Validate(a) => validate::run(g, a),
        Command::Graph(a) => graph::run(g, a),
        Command::Matrix(a) => matrix::run(g, a),
        Command::New(a) => new::run(g, a),
        Command::Render(a) => render::run(g, a),
        Command::Eval(a) => eval::run(g, a),
        Command::Build(a) => build::run(g, a),
        Command::Fetch(a) => fetch::run(g, a),
        Command::Cache(a) => cache::run(g, a),
        Command::Verify(a) => verify::run(g, a),
        Command::Pack(a) => pack::run(g, a),
        Command::ValidateRootfs(a) => validate_rootfs::run(g, a),
        Command::Rules(a) => rules::run(g, a),
        Command::Sbom(a) => sbom::run(g, a),
        Command::ImageInstaller(a) => image_installer::run(a),
        Command::Kmod(a) => kmod::run(g, a),
    }
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    s.parse()
}

fn parse_kernel_release(s: &str) -> Result<String, String> {
    crate::defs::vars::check_kernel_release(s).map(|()| s.to_string())
}

fn parse_build_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

/// The roots to load: the ones given, or the project defaults.
pub fn roots(global: &Global) -> Vec<PathBuf> {
    if !global.roots.is_empty() {
        return global.roots.clone();
    }
    let defaults: Vec<PathBuf> = ["pkgs", "extensions"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .collect();
    if defaults.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        defaults
    }
}

/// The graph of loaded definitions and the plan for `targets` in it (its
/// problems were reported when the definitions loaded).
pub fn resolve_targets<'d>(
    defs: &'d Definitions,
    targets: &[String],
) -> Result<(crate::graph::Graph<'d>, crate::graph::Plan), CliError> {
    let graph = crate::graph::Graph::new(defs, &mut crate::diag::Report::new());
    let plan = graph
        .resolve(targets)
        .map_err(|e| CliError::User(e.into()))?;
    Ok((graph, plan))
}

/// Loads the roots for one platform; prints the diagnostics to stderr and
/// fails when there are errors (warnings are printed and let through).
pub fn load_checked(global: &Global, opts: &RenderOpts) -> Result<Definitions, CliError> {
    let started = std::time::Instant::now();
    let (defs, mut report) = load(&LoadOptions {
        roots: absolute_roots(global)?,
        platform: opts.platform,
        build_args: opts.build_args.clone(),
        kernel_release: opts.kernel_release.clone(),
    });
    verbose_summary(global, &defs, started);
    let graph = crate::graph::Graph::new(&defs, &mut report);
    drop(graph);
    if opts.strict {
        report.escalate_warnings();
    }
    let report = report.sorted();
    print_report(&report);
    if report.has_errors() {
        return Err(CliError::user(format!(
            "the definitions have problems ({})",
            report.summary()
        )));
    }
    Ok(defs)
}

/// With `-v`: what was loaded from where, and how long it took.
pub fn verbose_summary(global: &Global, defs: &Definitions, started: std::time::Instant) {
    if global.verbose == 0 {
        return;
    }
    for (i, root) in defs.roots.iter().enumerate() {
        let n = defs.packages.iter().filter(|p| p.root == i).count();
        eprintln!(
            "loaded {n} packages from {} for {}",
            crate::diag::display_path(&root.dir).display(),
            defs.platform
        );
    }
    eprintln!("loaded in {} ms", started.elapsed().as_millis());
}

/// Roots as absolute paths, so spans are stable whatever the cwd; a root
/// that does not exist is a user error.
pub fn absolute_roots(global: &Global) -> Result<Vec<PathBuf>, CliError> {
    roots(global)
        .into_iter()
        .map(|r| {
            std::path::absolute(&r)
                .map_err(|e| CliError::user(format!("root {}: {e}", r.display())))
                .and_then(|abs| {
                    if abs.is_dir() {
                        Ok(normalize(&abs))
                    } else {
                        Err(CliError::user(format!(
                            "root {} is not a directory",
                            r.display()
                        )))
                    }
                })
        })
        .collect()
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Prints diagnostics to stderr, coloured when stderr is a terminal and
/// NO_COLOR is unset.
pub fn print_report(report: &Report) {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for d in report.iter() {
        let line = d.to_string();
        if color {
            let (label, code) = match d.severity {
                Severity::Error => ("error", "1;31"),
                Severity::Warning => ("warning", "1;33"),
            };
            eprintln!(
                "{}",
                line.replacen(
                    &format!(": {label}: "),
                    &format!(": \x1b[{code}m{label}\x1b[0m: "),
                    1
                )
            );
        } else {
            eprintln!("{line}");
        }
    }
}
