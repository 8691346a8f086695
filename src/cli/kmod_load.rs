//! `composer kmod-load MODULE...` and `composer kmod-unload MODULE...`:
//! loading modules in dependency order with the kernel's own calls (no
//! modprobe), and unloading them dependants first (`node::load`,
//! `node::unload`). One line per module says what was done.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{CliError, CliResult, Global};
use crate::node::host::Host;
use crate::node::index::Index;
use crate::node::load::{Done, LoadRequest, Param, load, plan_load, running_release};
use crate::node::unload::{plan_unload, unload};

/// Where the modules are.
#[derive(Args, Debug, Clone)]
pub struct ModulesDir {
    /// The root of the module tree: modules lie in
    /// BASE/lib/modules/RELEASE/ (or BASE/usr/lib/modules/RELEASE/) with
    /// depmod's modules.dep (a KMM image's is /opt).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub base: PathBuf,
    /// The kernel release whose modules to use (default: the running
    /// kernel's, as `uname -r` prints it).
    #[arg(long, value_name = "RELEASE", value_parser = super::parse_kernel_release)]
    pub kernel_release: Option<String>,
}

#[derive(Args, Debug)]
pub struct KmodLoadArgs {
    /// Modules to load, by name (`-` and `_` are the same), each after
    /// the modules it needs.
    #[arg(value_name = "MODULE", required = true)]
    pub modules: Vec<String>,
    #[command(flatten)]
    pub dir: ModulesDir,
    /// A module parameter, MODULE.KEY=VALUE; it must be one the module
    /// declares. Repeatable.
    #[arg(long = "param", value_name = "MODULE.KEY=VALUE")]
    pub params: Vec<Param>,
    /// Unload this module first (and refuse when something outside the
    /// request uses it): an in-tree module the out-of-tree one replaces.
    /// Repeatable.
    #[arg(long = "replace-in-tree", value_name = "MODULE")]
    pub replace_in_tree: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KmodUnloadArgs {
    /// Modules to unload, by name; the loaded modules of the index that
    /// need them are unloaded first.
    #[arg(value_name = "MODULE", required = true)]
    pub modules: Vec<String>,
    #[command(flatten)]
    pub dir: ModulesDir,
}

fn index(dir: &ModulesDir) -> Result<Index, CliError> {
    Index::read(&dir.base, &release(dir)).map_err(|e| CliError::User(e.into()))
}

fn release(dir: &ModulesDir) -> String {
    dir.kernel_release.clone().unwrap_or_else(running_release)
}

fn print(done: &Done) {
    println!("{done}");
}

pub fn run_load(_global: &Global, args: &KmodLoadArgs) -> CliResult {
    let index = index(&args.dir)?;
    let host = Host::system();
    let user = |e: crate::node::load::LoadError| CliError::User(e.into());
    index.check(&args.modules).map_err(user)?;
    let snap = host
        .snapshot(&release(&args.dir))
        .map_err(|e| user(e.into()))?;
    let req = LoadRequest {
        modules: args.modules.clone(),
        params: args.params.clone(),
        replace_in_tree: args.replace_in_tree.clone(),
    };
    let plan = plan_load(&index, &snap, &req).map_err(user)?;
    load(&host, &plan, &mut print).map_err(user)?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_unload(_global: &Global, args: &KmodUnloadArgs) -> CliResult {
    let index = index(&args.dir)?;
    let host = Host::system();
    let user = |e: crate::node::load::LoadError| CliError::User(e.into());
    index.check(&args.modules).map_err(user)?;
    let snap = host
        .snapshot(&release(&args.dir))
        .map_err(|e| user(e.into()))?;
    let plan = plan_unload(&index, &snap, &args.modules).map_err(user)?;
    unload(&host, &plan, &mut print).map_err(user)?;
    Ok(ExitCode::SUCCESS)
}
