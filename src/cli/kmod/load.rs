//! `composer kmod load NAME...` and `composer kmod unload NAME...`: modules
//! loaded in dependency order with the kernel's own calls (no modprobe)
//! and unloaded dependants first (`node::request`). One line per module
//! says what was done.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::{CliResult, LoadOptions, StateArgs, node_path, print_done, release, user};
use crate::node::Host;
use crate::node::load::LoadRequest;
use crate::node::request::{Lookup, load_modules, unload_modules};

pub const LOAD_HELP: &str = "\
Each module is loaded after the modules it needs, as depmod's modules.dep lists them, with
finit_module(2) (init_module(2) for a compressed file): no modprobe, so it works on a node with
only busybox beside composer. The modules are looked up in the module directories of the images
`composer kmod install` put on the node for the release (installed.json in --state-dir), then
in /lib/modules/<release>; --base DIR looks in DIR/lib/modules/<release>/ only (a KMM image's
tree is /opt).

A module already loaded from the same build (srcversion) is left alone, and said; another
build of the same name (an in-tree module) stops the load unless --replace-in-tree names it:
then it is unloaded first, with the rules of an unload. Parameters are checked against the
module's own list before anything is loaded; a value the kernel refuses is said in its words.

Examples:
  composer kmod load hello_user                  # hello_pcie first: hello_user needs it
  composer kmod load dummy --param dummy.numdummies=3
  composer kmod load ice --replace-in-tree ice   # the in-tree ice goes first
  composer kmod load hello_user --base /opt --kernel-release 6.1.0-57-cloud-amd64

Exit 1 when a module is refused; the modules loaded before it stay loaded (each was said).";

pub const UNLOAD_HELP: &str = "\
The loaded modules that need a named module (by modules.dep: the same directories as `load`)
are unloaded first, then the named ones, each after every module using it. Refused before
anything is unloaded when a module outside the request uses one of them, when a process holds
one (an open device), or when one cannot be unloaded (built in, no exit function), naming what
holds it. Unloading a module that is not loaded is not an error. --image NAME stands for the
modules of an installed image (as `composer kmod status` names it).

Examples:
  composer kmod unload hello_pcie                # hello_user first
  composer kmod unload --image hello-kmod
  composer kmod unload hello_pcie --base /opt";

/// Where the modules are.
#[derive(Args, Debug, Clone)]
pub struct ModulesDir {
    /// Look up modules in DIR/lib/modules/RELEASE/ (or
    /// DIR/usr/lib/modules/RELEASE/) with depmod's modules.dep, instead of
    /// the installed images' directories and the system's.
    #[arg(long, value_name = "DIR")]
    pub base: Option<PathBuf>,
    /// The kernel release whose modules to use (default: the running
    /// kernel's, as `uname -r` prints it).
    #[arg(long, value_name = "RELEASE", value_parser = crate::cli::parse_kernel_release)]
    pub kernel_release: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Modules to load, by name (`-` and `_` are the same), each after
    /// the modules it needs.
    #[arg(value_name = "NAME", required = true)]
    pub modules: Vec<String>,
    #[command(flatten)]
    pub dir: ModulesDir,
    #[command(flatten)]
    pub options: LoadOptions,
}

#[derive(Args, Debug)]
pub struct UnloadArgs {
    /// Modules to unload, by name.
    #[arg(value_name = "NAME", required_unless_present = "images")]
    pub modules: Vec<String>,
    /// Unload the modules of this installed image; repeatable.
    #[arg(long = "image", value_name = "NAME")]
    pub images: Vec<String>,
    #[command(flatten)]
    pub dir: ModulesDir,
}

fn lookup<'a>(
    host: &'a Host,
    cwd: &Path,
    dir: &ModulesDir,
) -> Result<Lookup<'a>, crate::cli::CliError> {
    Ok(Lookup {
        host,
        state_dir: node_path(cwd, &dir.state.state_dir),
        release: release(host, &dir.kernel_release)?,
        base: dir.base.as_ref().map(|b| node_path(cwd, b)),
    })
}

pub fn run_load(host: &Host, cwd: &Path, a: &LoadArgs) -> CliResult {
    let req = LoadRequest {
        modules: a.modules.clone(),
        params: a.options.params.clone(),
        replace_in_tree: a.options.replace_in_tree.clone(),
    };
    load_modules(&lookup(host, cwd, &a.dir)?, &req, &mut print_done).map_err(user)?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_unload(host: &Host, cwd: &Path, a: &UnloadArgs) -> CliResult {
    unload_modules(
        &lookup(host, cwd, &a.dir)?,
        &a.modules,
        &a.images,
        &mut print_done,
    )
    .map_err(user)?;
    Ok(ExitCode::SUCCESS)
}
