//! Loading kernel modules in dependency order, without kmod's modprobe:
//! a minimal system with only busybox beside composer can do it.
//!
//! [`plan_load`] turns a request into steps: every module of the load
//! order ([`Index::load_order`]) that is not in the kernel is loaded
//! (`syscall::insert`) with the `--param MODULE.KEY=VALUE` given for it;
//! parameters are checked against the module's own `parm` list first (the
//! kernel only warns about an unknown one and loads the module anyway). A
//! module already in the kernel is left alone when it is the same build as
//! the file (same `srcversion`), or when that cannot be told (neither has
//! one, and both are in-tree or both out-of-tree); a different build stops
//! the load, naming both, unless `--replace-in-tree` names it: then it is
//! unloaded first, with the rules of an unload (`unload.rs`). [`load`]
//! carries the steps out.
//!
//! Invariant: the plan is a pure function of the index, the module files
//! and a [`Snapshot`] of the kernel; only [`load`] calls the kernel, in the
//! planned order, and stops at the first refusal, after reporting each step
//! done. `LoadError` is the error of loading and unloading (`NodeError::Load`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::Host;
use super::host::HostError;
use super::index::Index;
use super::snapshot::{Loaded, Snapshot, State, normalize};
use super::syscall::{self, CallError, KernelError, Outcome};
use super::unload::{remove_all, unload_order};
use crate::validate::modules::{modinfo, read_module};

/// Parameters the kernel takes for every module.
const GENERIC_PARAMS: &[&str] = &["dyndbg", "async_probe"];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "{}: no modules for kernel {release} there (it has: {}); pass --base DIR for DIR/lib/modules/{release}/, or --kernel-release",
        base.display(), if has.is_empty() { "none".to_string() } else { has.join(", ") }
    )]
    NoRelease {
        base: PathBuf,
        release: String,
        has: Vec<String>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no modules.dep (make it with: depmod -b {} {release})", dir.display(), base.display())]
    NoIndex {
        dir: PathBuf,
        base: PathBuf,
        release: String,
    },
    #[error("{}:{line}: {why}", file.display())]
    Index {
        file: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{}{}", unknown_text(files, name), hint.as_ref().map(|h| format!("; did you mean `{h}`?")).unwrap_or_default())]
    UnknownModule {
        files: Vec<PathBuf>,
        name: String,
        hint: Option<String>,
    },
    #[error("--param {arg}: {why}")]
    Param { arg: String, why: String },
    #[error("{}: {why}", path.display())]
    Module { path: PathBuf, why: String },
    #[error(
        "{name} is already loaded, from another build than {} ({why}): an in-tree module of the same name? --replace-in-tree {name} unloads it first",
        path.display()
    )]
    OtherBuild {
        name: String,
        path: PathBuf,
        why: String,
    },
    #[error("{name} is built into the kernel: it cannot be {what}")]
    Builtin { name: String, what: &'static str },
    #[error("{name} is being unloaded right now; try again")]
    Going { name: String },
    #[error(
        "{name} is in use by {}, not among the modules to unload ({}); unload {} first",
        holders.join(", "), set.join(", "), if holders.len() == 1 { "it" } else { "them" }
    )]
    Held {
        name: String,
        holders: Vec<String>,
        set: Vec<String>,
    },
    #[error(
        "{name} is in use by {refs} reference(s) no module explains (a process holds it: an open device or file)"
    )]
    Busy { name: String, refs: u64 },
    #[error("{name} has no exit function: the kernel never unloads it")]
    Permanent { name: String },
    #[error("loading {name} ({}): {source}", path.display())]
    Load {
        name: String,
        path: PathBuf,
        source: CallError,
    },
    #[error("unloading {name}: {source}")]
    Unload { name: String, source: KernelError },
    #[error(transparent)]
    Host(#[from] HostError),
}

fn unknown_text(files: &[PathBuf], name: &str) -> String {
    if files.is_empty() {
        return format!(
            "no module `{name}`: the kernel has none of that name, and no modules.dep is there for its release"
        );
    }
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    format!("{}: no module `{name}`", files.join(", "))
}

/// `--param MODULE.KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub module: String,
    pub key: String,
    pub value: String,
}

impl std::str::FromStr for Param {
    type Err = String;
    fn from_str(s: &str) -> Result<Param, String> {
        let (target, value) = s
            .split_once('=')
            .ok_or_else(|| format!("expected MODULE.KEY=VALUE, got `{s}`"))?;
        let (module, key) = target
            .split_once('.')
            .filter(|(m, k)| !m.is_empty() && !k.is_empty())
            .ok_or_else(|| format!("expected MODULE.KEY=VALUE, got `{s}`"))?;
        let word = |w: &str| {
            w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        if !word(module) || !word(key) {
            return Err(format!(
                "`{target}` is not MODULE.KEY (letters, digits, `_`, `-`, `.`)"
            ));
        }
        if value.contains(['"', '\n', '\0']) {
            return Err("a value cannot hold `\"`, a newline or a NUL byte".into());
        }
        Ok(Param {
            module: normalize(module),
            key: normalize(key),
            value: value.to_string(),
        })
    }
}

impl fmt::Display for Param {
    /// `MODULE.KEY=VALUE`, as `--param` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}={}", self.module, self.key, self.value)
    }
}

impl Param {
    /// `key=value`, quoted when the value holds spaces (the kernel's
    /// parser takes `key="a b"`).
    fn kernel_form(&self) -> String {
        if self.value.contains(char::is_whitespace) {
            format!("{}=\"{}\"", self.key, self.value)
        } else {
            format!("{}={}", self.key, self.value)
        }
    }
}

/// What to load, with what, after unloading what.
#[derive(Debug, Clone, Default)]
pub struct LoadRequest {
    pub modules: Vec<String>,
    pub params: Vec<Param>,
    pub replace_in_tree: Vec<String>,
}

/// Why a module is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Loaded, with the file's `srcversion`.
    SameBuild(String),
    /// Loaded; it or the file has no `srcversion` to compare (and both
    /// are in-tree, or both out-of-tree).
    Unverifiable,
    /// Loaded by someone else right now.
    Initialising,
    Builtin,
}

/// One step of a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Load {
        name: String,
        path: PathBuf,
        params: String,
    },
    Keep {
        name: String,
        path: PathBuf,
        why: Kept,
        /// Parameters given for it, which a loaded module does not take.
        ignored: Vec<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadPlan {
    /// `--replace-in-tree` modules to unload first, dependants first.
    pub unload: Vec<String>,
    /// `--replace-in-tree` modules that are not in the kernel.
    pub not_loaded: Vec<String>,
    pub steps: Vec<Step>,
}

/// The steps of loading `req.modules` from `index`, given the kernel's
/// state `snap`.
pub fn plan_load(index: &Index, snap: &Snapshot, req: &LoadRequest) -> Result<LoadPlan, LoadError> {
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    for m in &req.modules {
        for (name, path) in index.load_order(m)? {
            if !order.iter().any(|(n, _)| *n == name) {
                order.push((name, path));
            }
        }
    }
    let infos = order
        .iter()
        .map(|(_, path)| read_info(path))
        .collect::<Result<Vec<_>, _>>()?;
    check_params(&req.params, &order, &infos)?;
    let (replace, not_loaded) = replacements(snap, &order, &infos, &req.replace_in_tree)?;
    let mut plan = LoadPlan {
        unload: unload_order(snap, &replace)?,
        not_loaded,
        steps: Vec::new(),
    };
    for (i, (name, path)) in order.iter().enumerate() {
        let params: Vec<String> = req
            .params
            .iter()
            .filter(|p| p.module == *name)
            .map(Param::kernel_form)
            .collect();
        let state = if replace.contains(name) {
            State::Absent
        } else {
            snap.state(name)
        };
        plan.steps.push(step(name, path, &infos[i], state, params)?);
    }
    Ok(plan)
}

/// The `--replace-in-tree` modules to unload (those loaded, unless the
/// load order has the same build of it), and those not loaded.
fn replacements(
    snap: &Snapshot,
    order: &[(String, PathBuf)],
    infos: &[Vec<(String, String)>],
    names: &[String],
) -> Result<(BTreeSet<String>, Vec<String>), LoadError> {
    let mut replace = BTreeSet::new();
    let mut not_loaded = Vec::new();
    for r in names {
        let r = normalize(r);
        let ours = order.iter().position(|(n, _)| *n == r);
        match snap.state(&r) {
            State::Absent => not_loaded.push(r),
            State::Builtin => {
                return Err(LoadError::Builtin {
                    name: r,
                    what: "replaced",
                });
            }
            State::Loaded(l) => {
                // Our own build, loaded before: nothing to replace.
                let same =
                    ours.is_some_and(|i| matches!(identify(&infos[i], l), Identity::Same(_)));
                if !same {
                    replace.insert(r);
                }
            }
        }
    }
    Ok((replace, not_loaded))
}

/// What to do with one module of the order, in `state`.
fn step(
    name: &str,
    path: &Path,
    info: &[(String, String)],
    state: State<'_>,
    params: Vec<String>,
) -> Result<Step, LoadError> {
    let why = match state {
        State::Absent => {
            return Ok(Step::Load {
                name: name.to_string(),
                path: path.to_path_buf(),
                params: params.join(" "),
            });
        }
        State::Builtin => Kept::Builtin,
        State::Loaded(l) if l.going => return Err(LoadError::Going { name: name.into() }),
        State::Loaded(l) if l.initialising => Kept::Initialising,
        State::Loaded(l) => match identify(info, l) {
            Identity::Same(v) => Kept::SameBuild(v),
            Identity::Unknown => Kept::Unverifiable,
            Identity::Different(why) => {
                return Err(LoadError::OtherBuild {
                    name: name.to_string(),
                    path: path.to_path_buf(),
                    why,
                });
            }
        },
    };
    Ok(Step::Keep {
        name: name.to_string(),
        path: path.to_path_buf(),
        why,
        ignored: params,
    })
}

/// A module file's `.modinfo`.
fn read_info(path: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let bad = |why: String| LoadError::Module {
        path: path.to_path_buf(),
        why,
    };
    let bytes = read_module(path).map_err(|w| bad(format!("{w} (modules.dep lists it)")))?;
    modinfo(&bytes).map_err(bad)
}

fn info_value<'a>(info: &'a [(String, String)], key: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Every parameter names a module of the order and a parameter it has.
fn check_params(
    params: &[Param],
    order: &[(String, PathBuf)],
    infos: &[Vec<(String, String)>],
) -> Result<(), LoadError> {
    for p in params {
        let arg = format!("{}.{}={}", p.module, p.key, p.value);
        let Some(i) = order.iter().position(|(n, _)| *n == p.module) else {
            let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
            return Err(LoadError::Param {
                arg,
                why: format!(
                    "{} is not among the modules to load ({})",
                    p.module,
                    names.join(", ")
                ),
            });
        };
        let known: BTreeSet<String> = infos[i]
            .iter()
            .filter(|(k, _)| k == "parm" || k == "parmtype")
            .filter_map(|(_, v)| v.split_once(':').map(|(n, _)| normalize(n)))
            .collect();
        if !known.contains(&p.key) && !GENERIC_PARAMS.contains(&p.key.as_str()) {
            let has = if known.is_empty() {
                "none".to_string()
            } else {
                known.into_iter().collect::<Vec<_>>().join(", ")
            };
            return Err(LoadError::Param {
                arg,
                why: format!("{} has no parameter `{}` (it has: {has})", p.module, p.key),
            });
        }
    }
    Ok(())
}

/// Whether a loaded module is the build a file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    Same(String),
    Different(String),
    Unknown,
}

fn identify(info: &[(String, String)], loaded: &Loaded) -> Identity {
    let file_src = info_value(info, "srcversion");
    if let (Some(f), Some(l)) = (file_src, loaded.srcversion.as_deref()) {
        return if f == l {
            Identity::Same(f.to_string())
        } else {
            Identity::Different(format!("loaded srcversion {l}, the file's {f}"))
        };
    }
    let file_in_tree = info_value(info, "intree") == Some("Y");
    let loaded_in_tree = !loaded.taint.contains('O');
    if file_in_tree != loaded_in_tree {
        let side = |t| if t { "in-tree" } else { "out-of-tree" };
        return Identity::Different(format!(
            "the loaded one is {}, the file is {}",
            side(loaded_in_tree),
            side(file_in_tree)
        ));
    }
    match (info_value(info, "version"), loaded.version.as_deref()) {
        (Some(f), Some(l)) if f != l => {
            Identity::Different(format!("loaded version {l}, the file's {f}"))
        }
        _ => Identity::Unknown,
    }
}

/// What was done to one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Loaded {
        name: String,
        path: PathBuf,
        params: String,
    },
    Kept {
        name: String,
        why: Kept,
        /// Parameters given for it, not applied.
        ignored: Vec<String>,
    },
    Unloaded {
        name: String,
        replaced: bool,
    },
    NotLoaded {
        name: String,
        replaced: bool,
    },
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Done::Loaded { name, path, params } if params.is_empty() => {
                write!(f, "loaded {name} ({})", path.display())
            }
            Done::Loaded { name, path, params } => {
                write!(f, "loaded {name} ({}) with {params}", path.display())
            }
            Done::Unloaded { name, replaced } => {
                let why = if *replaced {
                    " (--replace-in-tree)"
                } else {
                    ""
                };
                write!(f, "unloaded {name}{why}")
            }
            Done::NotLoaded {
                name,
                replaced: true,
            } => {
                write!(f, "{name} is not loaded: nothing to replace")
            }
            Done::NotLoaded { name, .. } => write!(f, "{name} is not loaded: nothing to unload"),
            Done::Kept { name, why, ignored } => {
                match why {
                    Kept::SameBuild(v) => write!(
                        f,
                        "{name} is already loaded from this build (srcversion {v}): left alone"
                    )?,
                    Kept::Unverifiable => write!(
                        f,
                        "{name} is already loaded (it or the file has no srcversion, so whether it is this build cannot be told): left alone"
                    )?,
                    Kept::Initialising => {
                        write!(f, "{name} is being loaded right now: left alone")?
                    }
                    Kept::Builtin => write!(f, "{name} is built into the kernel: nothing to load")?,
                }
                if !ignored.is_empty() {
                    write!(
                        f,
                        "; its parameters ({}) apply only when it is loaded again (unload it first)",
                        ignored.join(" ")
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Carries out a load plan on `host`, telling `report` each step as it is
/// done; stops at the first refusal.
pub fn load(host: &Host, plan: &LoadPlan, report: &mut dyn FnMut(&Done)) -> Result<(), LoadError> {
    for name in &plan.not_loaded {
        report(&Done::NotLoaded {
            name: name.clone(),
            replaced: true,
        });
    }
    remove_all(host, &plan.unload, true, report)?;
    let kmsg = host.path("/dev/kmsg");
    for step in &plan.steps {
        let done = match step {
            Step::Load { name, path, params } => {
                let fail = |source| LoadError::Load {
                    name: name.clone(),
                    path: path.clone(),
                    source,
                };
                match syscall::insert(path, params, &kmsg).map_err(fail)? {
                    Outcome::Done => Done::Loaded {
                        name: name.clone(),
                        path: path.clone(),
                        params: params.clone(),
                    },
                    // Loaded by someone else between the plan and now.
                    Outcome::AlreadyThere => Done::Kept {
                        name: name.clone(),
                        why: Kept::Unverifiable,
                        ignored: Vec::new(),
                    },
                }
            }
            Step::Keep {
                name, why, ignored, ..
            } => Done::Kept {
                name: name.clone(),
                why: why.clone(),
                ignored: ignored.clone(),
            },
        };
        report(&done);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_names_module_key_and_value() {
        let p: Param = "hello-pcie.debug_level=3".parse().unwrap();
        assert_eq!(
            (p.module.as_str(), p.key.as_str(), p.value.as_str()),
            ("hello_pcie", "debug_level", "3")
        );
        assert_eq!(p.kernel_form(), "debug_level=3");
        let p: Param = "m.greeting=a b".parse().unwrap();
        assert_eq!(p.kernel_form(), "greeting=\"a b\"");
        let p: Param = "m.list=a=b,c".parse().unwrap();
        assert_eq!(p.value, "a=b,c");
    }

    #[test]
    fn param_refuses_what_the_kernel_cannot_take() {
        for bad in [
            "noequals",
            "nodot=1",
            ".k=1",
            "m.=1",
            "m k.x=1",
            "m.k=say \"hi\"",
        ] {
            let e = bad.parse::<Param>().unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert_eq!(
            "nodot=1".parse::<Param>().unwrap_err(),
            "expected MODULE.KEY=VALUE, got `nodot=1`"
        );
    }
}
