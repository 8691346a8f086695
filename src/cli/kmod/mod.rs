//! `composer kmod`: module images on the node that runs them (`node`):
//! install, remove, status (here and in `status`), load and unload
//! (`load`), the boot unit (`unit`). Argument handling and printing only.

mod load;
mod status;
mod unit;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{CliError, CliResult, Global};
use crate::node::load::{Done, LoadRequest, Param};
use crate::node::request::{Lookup, load_modules, modules_of};
use crate::node::{Host, InstallOptions, Installed, Note, RemoveOptions, install, remove};

#[derive(Args, Debug)]
pub struct KmodArgs {
    #[command(subcommand)]
    pub command: KmodCommand,
}

#[derive(Subcommand, Debug)]
pub enum KmodCommand {
    /// Read module images for the running kernel, verify every module against it, install them where modprobe finds them (and load them with --load).
    #[command(after_help = INSTALL_HELP)]
    Install(InstallArgs),
    /// Load modules in dependency order with the kernel's own calls (no modprobe needed).
    #[command(after_help = load::LOAD_HELP)]
    Load(load::LoadArgs),
    /// Unload modules, the loaded modules that need them first.
    #[command(after_help = load::UNLOAD_HELP)]
    Unload(load::UnloadArgs),
    /// Undo an install: the image's modules and firmware go, depmod runs again.
    #[command(
        after_help = "Examples:\n  composer kmod remove hello-kmod\n  composer kmod remove 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar'\n  composer kmod remove hello-kmod --kernel-release 6.1.0-56-cloud-amd64\n\nNAME is the name `composer kmod status` shows; a reference works too. Like install,\nall or nothing: a failing depmod puts everything back. Modules still loaded stay in\nthe kernel (said): `composer kmod unload --image NAME` first unloads them."
    )]
    Remove(RemoveArgs),
    /// The installed images, each module's state (loaded or not) and the kernel's taint.
    #[command(
        after_help = "Examples:\n  composer kmod status\n  composer kmod status --json | jq '.images[].modules[] | select(.state != \"loaded\")'\n  composer kmod status --json | jq '.taint_flags[].letter'"
    )]
    Status(status::StatusArgs),
    /// Write a systemd unit that installs and loads an image at boot and unloads it on stop.
    #[command(after_help = unit::UNIT_HELP)]
    Unit(unit::UnitArgs),
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

--load then loads every module of the images as `composer kmod load` does (dependencies first,
the kernel's own calls, a module already loaded from the same build left alone), after
unloading the in-tree modules --replace-in-tree names; --param MODULE.KEY=VALUE must name a
parameter the module declares. When loading is refused, the images stay installed. --load is
for the running kernel only (not with another --kernel-release).

Examples:
  composer kmod install 'registry.example.com/kmods/hello-kmod:${KERNEL_FULL_VERSION}' --load
  composer kmod install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' --cert /etc/mok.pem
  composer kmod install oci:/srv/images/hailort:6.1.0-57-cloud-amd64 --kernel /boot/vmlinuz-6.1.0-57-cloud-amd64
  composer kmod install 'ghcr.io/org/ice:${KERNEL_FULL_VERSION}' --load --replace-in-tree ice \\
      --param ice.debug=1
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

/// `--param` and `--replace-in-tree`, for `install --load` and `load`.
#[derive(Args, Debug, Clone)]
pub struct LoadOptions {
    /// A module parameter, MODULE.KEY=VALUE; it must be one the module
    /// declares (`modinfo -p`). Repeatable.
    #[arg(long = "param", value_name = "MODULE.KEY=VALUE")]
    pub params: Vec<Param>,
    /// Unload this module first (refused when a module outside the request
    /// uses it): an in-tree module the out-of-tree one replaces.
    /// Repeatable.
    #[arg(long = "replace-in-tree", value_name = "MODULE")]
    pub replace_in_tree: Vec<String>,
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
    /// Load the images' modules once installed, dependencies first.
    #[arg(long)]
    pub load: bool,
    #[command(flatten)]
    pub load_options: LoadOptions,
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

pub fn run(g: &Global, args: &KmodArgs) -> CliResult {
    let cwd = std::env::current_dir().map_err(|e| CliError::Internal(e.into()))?;
    match &args.command {
        KmodCommand::Install(a) => run_install(&node_root(g)?, &cwd, a),
        KmodCommand::Load(a) => load::run_load(&node_root(g)?, &cwd, a),
        KmodCommand::Unload(a) => load::run_unload(&node_root(g)?, &cwd, a),
        KmodCommand::Remove(a) => run_remove(&node_root(g)?, &cwd, a),
        KmodCommand::Status(a) => status::run(&node_root(g)?, &cwd, g.json, a),
        KmodCommand::Unit(a) => unit::run(&cwd, a),
    }
}

/// `--root`: where the node's `/` is.
fn node_root(g: &Global) -> Result<Host, CliError> {
    match g.roots.as_slice() {
        [] => Ok(Host::system()),
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

/// One line per module a load or unload touched.
fn print_done(done: &Done) {
    println!("{done}");
}

fn run_install(host: &Host, cwd: &Path, a: &InstallArgs) -> CliResult {
    let o = &a.load_options;
    let load_options = !o.params.is_empty() || !o.replace_in_tree.is_empty();
    if load_options && !a.load {
        return Err(CliError::user(
            "--param and --replace-in-tree apply to loading: add --load",
        ));
    }
    let release = release(host, &a.kernel_release)?;
    if a.load && host.running_release().ok().as_deref() != Some(release.as_str()) {
        return Err(CliError::user(format!(
            "--load loads into the running kernel, and kernel {release} is not running: install without --load"
        )));
    }
    let opts = InstallOptions {
        host,
        release,
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
    for i in &installed {
        println!("{}\tinstalled\t{}\t{}", i.name, i.digest, i.dir.display());
        if !a.load {
            let names: Vec<&str> = i.modules.iter().map(|m| m.name.as_str()).collect();
            eprintln!(
                "load with: composer kmod load {} (or: {})",
                names.join(" "),
                modprobe_line(i)
            );
        }
    }
    if a.load {
        let lookup = Lookup {
            host,
            state_dir: opts.state_dir.clone(),
            release: opts.release.clone(),
            base: None,
        };
        let req = LoadRequest {
            modules: installed.iter().flat_map(modules_of).collect(),
            params: o.params.clone(),
            replace_in_tree: o.replace_in_tree.clone(),
        };
        load_modules(&lookup, &req, &mut print_done).map_err(|e| {
            let names: Vec<&str> = installed.iter().map(|i| i.name.as_str()).collect();
            CliError::User(
                anyhow::Error::new(e)
                    .context(format!("installed {}, not loaded", names.join(", "))),
            )
        })?;
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
