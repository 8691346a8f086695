//! `composer kmod install|remove|status`: module images on the node that
//! runs them (`node`). Argument handling and printing only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{CliError, CliResult, Global};
use crate::node::state::{Status, status};
use crate::node::{Host, InstallOptions, Installed, Note, RemoveOptions, install, remove};

#[derive(Args, Debug)]
pub struct KmodArgs {
    #[command(subcommand)]
    pub command: KmodCommand,
}

#[derive(Subcommand, Debug)]
pub enum KmodCommand {
    /// Read module images for the running kernel, verify every module against it, install them where modprobe finds them.
    #[command(after_help = INSTALL_HELP)]
    Install(InstallArgs),
    /// Undo an install: the image's modules and firmware go, depmod runs again.
    #[command(
        after_help = "Examples:\n  composer kmod remove hello-kmod\n  composer kmod remove 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar'\n  composer kmod remove hello-kmod --kernel-release 6.1.0-56-cloud-amd64\n\nNAME is the name `composer kmod status` shows; a reference works too. Like install,\nall or nothing: a failing depmod puts everything back."
    )]
    Remove(RemoveArgs),
    /// The installed images, each module's state (loaded or not) and the kernel's taint.
    #[command(
        after_help = "Examples:\n  composer kmod status\n  composer kmod status --json | jq '.images[].modules[] | select(.state != \"loaded\")'\n  composer kmod status --json | jq '.taint_flags[].letter'"
    )]
    Status(StatusArgs),
}

const INSTALL_HELP: &str = "\
REF is any image reference composer reads (a registry, oci:DIR[:TAG], oci-archive:FILE[:TAG],
docker-archive:FILE); ${KERNEL_FULL_VERSION} in it becomes the kernel release (KMM's notation).
The image may be a KMM kmod image (/opt/lib/modules/<release>/), a Talos system extension
(rootfs/usr/lib/modules/<release>/) or a tree with /lib/modules/<release>/ or
/usr/lib/modules/<release>/; an image without modules for the release is refused, naming the
releases it has.

Before anything is written, every module is checked: its signature against the certificates
the kernel trusts (those built into /boot/vmlinuz-<release>, /lib/modules/<release>/vmlinuz or
/usr/lib/modules/<release>/vmlinuz; keys enrolled with MOK are not in it: pass --cert), its
vermagic, its dependencies and undefined symbols against the kernel. When the kernel enforces
signatures (/sys/module/module/parameters/sig_enforce = Y) an untrusted module stops the
install; otherwise composer warns that loading it taints the kernel.

Modules go to /lib/modules/<release>/updates/composer/<name>/ (plain `modprobe` finds them) or,
when that is read-only (Flatcar, Talos) or missing, or with --own-modules-dir, to
<state-dir>/modules/lib/modules/<release>/... (`modprobe -d <state-dir>/modules`); depmod indexes
them. Firmware goes to /lib/firmware/updates/<release>/, or to <state-dir>/firmware/<release>/
with firmware_class.path set to it. Any failure (depmod included) leaves the node as it was.
The image is cached per release (--cache-dir): when it cannot be read again (registry
unreachable, archive gone, --offline), the cached copy is used, and said.

Examples:
  composer kmod install 'registry.example.com/kmods/hello-kmod:${KERNEL_FULL_VERSION}'
  composer kmod install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' --cert /etc/mok.pem
  composer kmod install oci:/srv/images/hailort:6.1.0-57-cloud-amd64 --kernel /boot/vmlinuz-6.1.0-57-cloud-amd64
  composer kmod install 'ghcr.io/org/nvidia:${KERNEL_FULL_VERSION}' --kernel-release 6.1.0-58-cloud-amd64
  composer kmod install --offline 'registry.example.com/kmods/hello-kmod:${KERNEL_FULL_VERSION}'
  composer --root /mnt/node kmod install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar'

--root DIR (before or after `kmod`) is where the node's / is (default /): every node path
(/proc, /sys, /lib/modules, --state-dir, --cache-dir) is taken under it; --cert and --kernel
files are not. Exit 1 when anything is refused or fails.";

/// Where composer keeps its state on the node.
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// composer's state directory on the node (installed.json, its own
    /// module and firmware directories).
    #[arg(
        long = "state-dir",
        value_name = "DIR",
        default_value = "/var/lib/composer"
    )]
    pub state_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Image references (`${KERNEL_FULL_VERSION}` is replaced).
    #[arg(value_name = "REF", required = true)]
    pub refs: Vec<String>,
    /// The kernel release to install for (default: the running kernel's,
    /// as `uname -r` prints it).
    #[arg(long, value_name = "RELEASE", value_parser = super::parse_kernel_release)]
    pub kernel_release: Option<String>,
    /// A certificate (PEM or DER) modules must be signed by; repeatable.
    /// Replaces the default (the kernel image's own certificates).
    #[arg(long = "cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,
    /// A kernel image whose built-in certificates modules must be signed
    /// by; repeatable. Replaces the default.
    #[arg(long = "kernel", value_name = "FILE")]
    pub kernels: Vec<PathBuf>,
    /// The image cache on the node, one directory per kernel release.
    #[arg(
        long = "cache-dir",
        value_name = "DIR",
        default_value = "/var/cache/composer/kmod"
    )]
    pub cache_dir: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
    /// Install the one image given under this name (default: from the
    /// reference: `hello-kmod` for `.../hello-kmod:TAG` or
    /// `hello-kmod-${KERNEL_FULL_VERSION}.tar`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Install into composer's own module directory (for `modprobe -d`)
    /// even when /lib/modules/<release> is writable.
    #[arg(long)]
    pub own_modules_dir: bool,
    /// Never read the images: use the cached copies.
    #[arg(long)]
    pub offline: bool,
    /// Allow plain HTTP to registries.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// Installed image names or the references they were installed from.
    #[arg(value_name = "NAME|REF", required = true)]
    pub targets: Vec<String>,
    /// The kernel release they were installed for (default: the running
    /// kernel's).
    #[arg(long, value_name = "RELEASE", value_parser = super::parse_kernel_release)]
    pub kernel_release: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn run(g: &Global, args: &KmodArgs) -> CliResult {
    let host = node_root(g)?;
    let cwd = std::env::current_dir().map_err(|e| CliError::Internal(e.into()))?;
    match &args.command {
        KmodCommand::Install(a) => run_install(&host, &cwd, a),
        KmodCommand::Remove(a) => run_remove(&host, &cwd, a),
        KmodCommand::Status(a) => run_status(&host, &cwd, g.json, a),
    }
}

/// `--root`: where the node's `/` is.
fn node_root(g: &Global) -> Result<Host, CliError> {
    match g.roots.as_slice() {
        [] => Ok(Host::new("/")),
        [one] if one.is_dir() => Ok(Host::new(
            std::path::absolute(one).map_err(|e| CliError::Internal(e.into()))?,
        )),
        [one] => Err(CliError::user(format!(
            "--root {}: not a directory",
            one.display()
        ))),
        _ => Err(CliError::user(
            "--root is where the node's / is: give it once",
        )),
    }
}

/// A node path: relative ones are taken from the current directory.
fn node_path(cwd: &Path, p: &Path) -> PathBuf {
    cwd.join(p)
}

fn user(e: crate::node::NodeError) -> CliError {
    CliError::User(e.into())
}

fn release(host: &Host, given: &Option<String>) -> Result<String, CliError> {
    let r = match given {
        Some(r) => r.clone(),
        None => host.running_release().map_err(user)?,
    };
    crate::defs::vars::check_kernel_release(&r)
        .map_err(|e| CliError::user(format!("the running kernel's release: {e}")))?;
    Ok(r)
}

fn print_note(n: Note) {
    match n {
        Note::Info(m) => eprintln!("{m}"),
        Note::Warning(m) => eprintln!("warning: {m}"),
    }
}

fn run_install(host: &Host, cwd: &Path, a: &InstallArgs) -> CliResult {
    let opts = InstallOptions {
        host,
        release: release(host, &a.kernel_release)?,
        state_dir: node_path(cwd, &a.state.state_dir),
        cache_dir: node_path(cwd, &a.cache_dir),
        certs: a.certs.iter().map(|c| cwd.join(c)).collect(),
        kernels: a.kernels.iter().map(|k| cwd.join(k)).collect(),
        name: a.name.clone(),
        own_modules_dir: a.own_modules_dir,
        cwd: cwd.to_path_buf(),
        platform: crate::node::source::node_platform(),
        offline: a.offline,
        insecure: a.insecure,
    };
    let installed = install(&a.refs, &opts, &print_note).map_err(user)?;
    // `--load` hooks in here: `node::load` takes `installed` (each entry's
    // modules in load order, its `modprobe_args()` and `modules_dep()`).
    for i in &installed {
        println!("{}\tinstalled\t{}\t{}", i.name, i.digest, i.dir.display());
        eprintln!("load with: {}", modprobe_line(i));
    }
    Ok(ExitCode::SUCCESS)
}

/// `modprobe [-d DIR] -a MODULE...`, the image's modules in load order.
fn modprobe_line(i: &Installed) -> String {
    let mut words = vec!["modprobe".to_string()];
    words.extend(i.modprobe_args());
    words.push("-a".into());
    words.extend(i.modules.iter().map(|m| m.name.clone()));
    words.join(" ")
}

fn run_remove(host: &Host, cwd: &Path, a: &RemoveArgs) -> CliResult {
    let opts = RemoveOptions {
        host,
        release: release(host, &a.kernel_release)?,
        state_dir: node_path(cwd, &a.state.state_dir),
        cwd: cwd.to_path_buf(),
    };
    for i in remove(&a.targets, &opts, &print_note).map_err(user)? {
        println!("{}\tremoved\t{}\t{}", i.name, i.digest, i.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_status(host: &Host, cwd: &Path, json: bool, a: &StatusArgs) -> CliResult {
    let s = status(host, &node_path(cwd, &a.state.state_dir)).map_err(user)?;
    if json {
        let text = serde_json::to_string_pretty(&s).map_err(|e| CliError::Internal(e.into()))?;
        println!("{text}");
    } else {
        print!("{}", status_text(&s));
    }
    Ok(ExitCode::SUCCESS)
}

fn status_text(s: &Status) -> String {
    let mut out = String::new();
    let kernel = s.running_release.as_deref().unwrap_or("(unknown)");
    let sig = match s.sig_enforce {
        Some(true) => "module signatures enforced (sig_enforce=Y)",
        Some(false) => "module signatures not enforced (sig_enforce=N)",
        None => "no module signatures",
    };
    let taint = match s.tainted {
        None => "taint unknown".to_string(),
        Some(0) => "not tainted".to_string(),
        Some(v) => format!(
            "tainted {v}: {}",
            s.taint_flags
                .iter()
                .map(|f| format!("{} ({})", f.letter, f.description))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    out.push_str(&format!("kernel {kernel}: {sig}; {taint}\n"));
    if s.images.is_empty() {
        out.push_str("no images installed\n");
    }
    for i in &s.images {
        let running = if i.running { "" } else { " (not running)" };
        out.push_str(&format!(
            "\n{}  {}{running}  {}\n  from {}\n  in {}\n",
            i.name,
            i.release,
            i.digest,
            i.reference,
            i.dir.display()
        ));
        for m in &i.modules {
            let mut line = format!("  {:<24} {}", m.name, m.state);
            if let Some(t) = m.taint.as_deref().filter(|t| !t.is_empty()) {
                line.push_str(&format!(" (taint {t})"));
            }
            if !m.used_by.is_empty() {
                line.push_str(&format!(", used by {}", m.used_by.join(", ")));
            }
            if !m.present {
                line.push_str(&format!("; {} is missing", m.path.display()));
            }
            out.push_str(&line);
            out.push('\n');
        }
        if let Some(d) = &i.firmware_dir {
            out.push_str(&format!(
                "  firmware: {} file(s) in {}\n",
                i.firmware.len(),
                d.display()
            ));
        }
    }
    out
}
