//! Every module of an image checked against the node's kernel before
//! anything is written, as the kernel's module loader and modprobe will
//! check it:
//!
//! - the signature verifies against a trusted certificate
//!   (`sign::verify`, over the decompressed module). Not trusted: when the
//!   kernel enforces signatures (`sig_enforce=Y`) a problem naming the
//!   module and why; when it does not, a warning that loading it taints
//!   the kernel; a kernel without module signatures does not care. No
//!   certificate to check with is a problem under enforcement and a
//!   warning otherwise;
//! - `vermagic=` is exactly the kernel's when known (`KernelFacts`), else
//!   starts with the release;
//! - every `depends=` name is a module of the image or of the kernel;
//! - every undefined symbol is exported by the kernel or a module of the
//!   image (`validate::symbols::unresolved`), when the kernel's exports
//!   are known;
//! - names are unique in the image and `depends=` has no cycle.
//!
//! The modules come back in load order: each after the modules of the
//! image it depends on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use super::host::Enforcement;
use super::kernel::{Anchors, KernelFacts};
use super::source::ImageModules;
use crate::validate::modules::{modinfo, module_name, read_module, vermagic_matches};
use crate::validate::symbols::{ModuleSymbols, module_symbols, unresolved};

/// A module that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedModule {
    /// Relative to the image's release directory.
    pub file: PathBuf,
    /// The kernel's name for it (`-` as `_`).
    pub name: String,
    /// Its `depends=` names.
    pub depends: Vec<String>,
    /// The subject of the certificate its signature verified against.
    pub signer: Option<String>,
}

/// The outcome for one image.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// In load order.
    pub modules: Vec<CheckedModule>,
    /// Each stops the install: `FILE: reason`.
    pub problems: Vec<String>,
    /// Each is said and lets the install go on.
    pub warnings: Vec<String>,
}

/// One module as read, before the checks across modules.
struct Read {
    checked: CheckedModule,
    license: Option<String>,
    import_ns: Vec<String>,
    symbols: Option<ModuleSymbols>,
}

/// Checks every module of `image` against `kernel`.
pub fn verify(
    image: &ImageModules,
    kernel: &KernelFacts,
    anchors: &Result<Anchors, String>,
    enforcement: Enforcement,
) -> Verdict {
    let mut v = Verdict::default();
    match (anchors, enforcement) {
        (Err(why), Enforcement::Enforced) => v.problems.push(format!(
            "signatures cannot be checked ({why}), and the kernel enforces module signatures (sig_enforce=Y): pass --cert FILE or --kernel FILE"
        )),
        (Err(why), Enforcement::NotEnforced) => v.warnings.push(format!(
            "signatures are not checked ({why}); a module not signed by a key the kernel trusts taints it when loaded"
        )),
        _ => {}
    }
    let mut read = Vec::new();
    for file in &image.modules {
        if let Some(r) = read_one(image, file, kernel, anchors, enforcement, &mut v) {
            read.push(r);
        }
    }
    check_names(&read, kernel, &mut v);
    check_symbols(image, &read, kernel, &mut v);
    v.modules = load_order(
        read.into_iter().map(|r| r.checked).collect(),
        &mut v.problems,
    );
    v
}

fn value<'a>(info: &'a [(String, String)], key: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Reads one module and checks what concerns it alone.
fn read_one(
    image: &ImageModules,
    file: &PathBuf,
    kernel: &KernelFacts,
    anchors: &Result<Anchors, String>,
    enforcement: Enforcement,
    v: &mut Verdict,
) -> Option<Read> {
    let shown = file.display().to_string();
    let bytes = match read_module(&image.dir.join(file)) {
        Ok(b) => b,
        Err(e) => {
            v.problems.push(format!("{shown}: {e}"));
            return None;
        }
    };
    let info = match modinfo(&bytes) {
        Ok(i) => i,
        Err(e) => {
            v.problems
                .push(format!("{shown}: {e}: not a kernel module"));
            return None;
        }
    };
    let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = value(&info, "name")
        .map(|n| n.replace('-', "_"))
        .or_else(|| file_name.as_deref().and_then(module_name))
        .unwrap_or_default();
    check_vermagic(value(&info, "vermagic"), kernel, &shown, v);
    let signer = check_signature(&bytes, anchors, enforcement, &shown, v);
    let symbols = match kernel.exports {
        Some(_) => match module_symbols(&bytes, &name) {
            Ok(s) => Some(s),
            Err(e) => {
                v.problems.push(format!("{shown}: {e}"));
                None
            }
        },
        None => None,
    };
    let depends = value(&info, "depends")
        .unwrap_or_default()
        .split(',')
        .map(|d| d.trim().replace('-', "_"))
        .filter(|d| !d.is_empty())
        .collect();
    Some(Read {
        checked: CheckedModule {
            file: file.clone(),
            name,
            depends,
            signer,
        },
        license: value(&info, "license").map(str::to_string),
        import_ns: info
            .iter()
            .filter(|(k, _)| k == "import_ns")
            .map(|(_, v)| v.clone())
            .collect(),
        symbols,
    })
}

/// The module's `vermagic=` against the kernel's.
fn check_vermagic(found: Option<&str>, kernel: &KernelFacts, shown: &str, v: &mut Verdict) {
    let release = &kernel.release;
    match (found, &kernel.vermagic) {
        (None, _) => v.problems.push(format!(
            "{shown}: no `vermagic=` in .modinfo: the kernel refuses the module"
        )),
        (Some(m), Some((want, from))) if m.trim_end() != want.trim_end() => v.problems.push(format!(
            "{shown}: vermagic {:?} is not kernel {release}'s {:?} (from {from}): the kernel refuses the module",
            m.trim_end(),
            want.trim_end()
        )),
        (Some(m), None) if !vermagic_matches(m, release) => v.problems.push(format!(
            "{shown}: vermagic {m:?} is not for kernel {release}: the kernel refuses the module"
        )),
        _ => {}
    }
}

/// The signer of a module whose signature verifies; an untrusted module
/// is a problem or a warning, as the kernel's enforcement says.
fn check_signature(
    bytes: &[u8],
    anchors: &Result<Anchors, String>,
    enforcement: Enforcement,
    shown: &str,
    v: &mut Verdict,
) -> Option<String> {
    let a = anchors.as_ref().ok()?;
    match crate::sign::verify::verify(bytes, &a.certs) {
        Ok(ok) => return Some(a.certs[ok.signer].subject()),
        Err(e) => match enforcement {
            Enforcement::Enforced => v.problems.push(format!(
                "{shown}: {e} (checked against {}); the kernel enforces module signatures (sig_enforce=Y) and refuses it",
                a.from
            )),
            Enforcement::NotEnforced => v.warnings.push(format!(
                "{shown}: {e} (checked against {}); the kernel does not enforce module signatures (sig_enforce=N): loading it taints the kernel (E)",
                a.from
            )),
            Enforcement::Unsupported => {}
        },
    }
    None
}

/// Unique names; every dependency provided by the image or the kernel.
fn check_names(read: &[Read], kernel: &KernelFacts, v: &mut Verdict) {
    let mut seen: BTreeMap<&str, &PathBuf> = BTreeMap::new();
    for r in read {
        if let Some(first) = seen.insert(&r.checked.name, &r.checked.file) {
            v.problems.push(format!(
                "{}: module `{}` is also {}: modprobe would take only one",
                r.checked.file.display(),
                r.checked.name,
                first.display()
            ));
        }
    }
    let Some(known) = &kernel.modules else { return };
    for r in read {
        for dep in &r.checked.depends {
            if !seen.contains_key(dep.as_str()) && !known.contains(dep) {
                v.problems.push(format!(
                    "{}: depends on `{dep}`, which neither the image nor kernel {} provides (modules.dep, modules.builtin): modprobe cannot load it",
                    r.checked.file.display(),
                    kernel.release
                ));
            }
        }
    }
}

/// Every undefined symbol resolved by the kernel or the image.
fn check_symbols(image: &ImageModules, read: &[Read], kernel: &KernelFacts, v: &mut Verdict) {
    let Some(tree) = &kernel.exports else { return };
    let mut siblings = HashMap::new();
    for s in read.iter().filter_map(|r| r.symbols.as_ref()) {
        siblings.extend(s.exports.iter().map(|(k, e)| (k.clone(), e.clone())));
    }
    let beside = format!("the image ({})", image.layout);
    for r in read {
        let Some(syms) = &r.symbols else { continue };
        let ns: Vec<&str> = r.import_ns.iter().map(String::as_str).collect();
        for p in unresolved(syms, r.license.as_deref(), &ns, &siblings, tree, &beside) {
            v.problems
                .push(format!("{}: {p}", r.checked.file.display()));
        }
    }
}

/// The modules ordered so each comes after the image's modules it depends
/// on; a cycle is a problem (the kernel could load none of them).
fn load_order(modules: Vec<CheckedModule>, problems: &mut Vec<String>) -> Vec<CheckedModule> {
    let names: BTreeSet<String> = modules.iter().map(|m| m.name.clone()).collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut left = modules;
    let mut out = Vec::new();
    while !left.is_empty() {
        let (ready, wait): (Vec<_>, Vec<_>) = left.into_iter().partition(|m| {
            m.depends
                .iter()
                .all(|d| placed.contains(d) || !names.contains(d))
        });
        if ready.is_empty() {
            let cycle: Vec<String> = wait.iter().map(|m| m.name.clone()).collect();
            problems.push(format!(
                "modules {} depend on each other in a cycle: none can be loaded",
                cycle.join(", ")
            ));
            out.extend(wait);
            break;
        }
        placed.extend(ready.iter().map(|m| m.name.clone()));
        out.extend(ready);
        left = wait;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, deps: &[&str]) -> CheckedModule {
        CheckedModule {
            file: PathBuf::from(format!("{name}.ko")),
            name: name.into(),
            depends: deps.iter().map(|d| d.to_string()).collect(),
            signer: None,
        }
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let mut p = Vec::new();
        let order = load_order(
            vec![
                m("drm_x", &["base", "drm"]),
                m("base", &[]),
                m("top", &["drm_x"]),
            ],
            &mut p,
        );
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["base", "drm_x", "top"]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_dependency_cycle_is_a_problem() {
        let mut p = Vec::new();
        let order = load_order(vec![m("a", &["b"]), m("b", &["a"]), m("c", &[])], &mut p);
        assert_eq!(order.len(), 3);
        assert_eq!(
            p,
            ["modules a, b depend on each other in a cycle: none can be loaded"]
        );
    }
}
