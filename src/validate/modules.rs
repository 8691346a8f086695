//! `modules-signed`, `modules-vermagic`, `modules-depends`: the kernel
//! modules a tree ships, checked as the kernel and modprobe will see them.
//!
//! Where modules live: `usr/lib/modules/<release>/` (for an extension,
//! under `rootfs/`), or `opt/lib/modules/<release>/` in a KMM kmod image.
//! A module is a `.ko`, or a `.ko.xz`/`.ko.gz`/`.ko.zst`, which is
//! decompressed (up to 1 GiB) before it is checked, as modprobe does.
//!
//! - `modules-signed`: every module anywhere in the tree (not only under
//!   the modules directory: a stray `.ko` can be `insmod`ed too) carries a
//!   signature that verifies against a trusted certificate
//!   (`sign::tree::verify_paths`). Without trusted certificates the rule
//!   can only check that a well-formed signature is present; it says so in
//!   one warning, so `--strict` refuses an unchecked signer.
//! - `modules-vermagic`: modules exist for exactly one kernel release (two
//!   release directories is a finding naming both), every module lies in a
//!   release directory, and its `.modinfo` `vermagic=` starts with that
//!   directory's name followed by a space or the end (so `6.1` does not
//!   match `6.1.0 SMP ...`). When the context knows the kernel build tree
//!   of a release directory ([`Context::kernel_tree`]), its modules'
//!   vermagic must be exactly that kernel's ([`KernelTree::vermagic`]); a
//!   finding names both strings. With trees known but none for a release
//!   directory, one warning says its modules were checked by name only.
//! - `modules-depends`: every `depends=` name is provided by a module in
//!   the same release directory (by its `name=`, else its file name; `-`
//!   and `_` are the same, as for the kernel), or listed in that
//!   directory's `modules.builtin` when the file exists. With
//!   `allow_in_tree_deps` (a KMM image's `host` symlink to the node's
//!   modules, or an extension whose modules use the base kernel's) names
//!   nobody here provides are not findings. With the kernel build tree of
//!   the release known, the kernel's own modules (those `Module.symvers`
//!   names) provide names too, and each module's symbols are checked as
//!   the module loader resolves them (`symbols.rs`): one finding per
//!   symbol that neither the kernel nor a module of the release directory
//!   exports, per GPL-only symbol a non-GPL module uses, per namespace not
//!   imported. `allow_in_tree_deps` does not excuse a missing symbol:
//!   `Module.symvers` already lists what the kernel's modules export.
//!
//! Invariant: the `host` symlink of a KMM image, like every symlink, is
//! never followed.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use super::kernel_tree::KernelTree;
use super::symbols::{ModuleSymbols, module_symbols, unresolved};
use super::{Context, Kind, Rule, Severity, Sink, Tree, components, walk};
use crate::sign::kmod::{self, SigError};
use crate::sign::tree::verify_paths;

/// The largest decompressed module read.
const MAX_MODULE: u64 = 1 << 30;
const SUFFIXES: &[&str] = &[".ko", ".ko.xz", ".ko.gz", ".ko.zst"];

/// The module name a file provides: its name without the suffix, `-` as
/// `_` (the kernel's normal form).
pub fn module_name(file_name: &str) -> Option<String> {
    SUFFIXES
        .iter()
        .find_map(|s| file_name.strip_suffix(s))
        .filter(|n| !n.is_empty())
        .map(normalize)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Every module file under `dir`, in name order; unreadable entries are
/// findings.
fn module_files(tree: &Tree<'_>, dir: &Path, out: &mut Sink) -> Vec<PathBuf> {
    let mut mods = Vec::new();
    for entry in walk(dir) {
        match entry {
            Ok(e) => {
                if e.file_type().is_file()
                    && module_name(&e.file_name().to_string_lossy()).is_some()
                {
                    mods.push(e.into_path());
                }
            }
            Err(err) => out.unreadable(tree, &err),
        }
    }
    mods
}

/// A module's bytes, decompressed when its name says so.
pub fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let name = path.to_string_lossy();
    let mut reader: Box<dyn Read> = if name.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new(file))
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if name.ends_with(".zst") {
        Box::new(zstd::Decoder::new(file).map_err(|e| format!("cannot decompress: {e}"))?)
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    reader
        .by_ref()
        .take(MAX_MODULE + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read: {e}"))?;
    if out.len() as u64 > MAX_MODULE {
        return Err(format!("larger than {MAX_MODULE} bytes; not read"));
    }
    Ok(out)
}

/// The `key=value` entries of a `.modinfo` section.
pub fn parse_modinfo(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The `.modinfo` entries of a module's ELF (a signature, if any, is cut
/// off first).
pub fn modinfo(module: &[u8]) -> Result<Vec<(String, String)>, String> {
    let elf = kmod::split(module).map(|s| s.content).unwrap_or(module);
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF object: {e}"))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or("no .modinfo section")?;
    let data = section
        .data()
        .map_err(|e| format!("cannot read .modinfo: {e}"))?;
    Ok(parse_modinfo(data))
}

/// Whether a vermagic string is for kernel `release`.
pub fn vermagic_matches(vermagic: &str, release: &str) -> bool {
    vermagic
        .strip_prefix(release)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// The directories directly under the modules directory, sorted.
fn release_dirs(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Whether a KMM image has a `host` symlink in a release directory
/// (`opt/lib/modules/<release>/host -> /lib/modules/<release>`), which
/// lets its modules use the node's in-tree modules.
pub fn kmm_host_link(root: &Path) -> bool {
    let dir = root.join("opt/lib/modules");
    release_dirs(&dir).iter().any(|r| {
        dir.join(r)
            .join("host")
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
    })
}

pub struct Signed;

impl Rule for Signed {
    fn name(&self) -> &'static str {
        "modules-signed"
    }

    fn description(&self) -> &'static str {
        "every kernel module carries a signature that verifies against a trusted certificate"
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn applies_to(&self) -> &'static [Kind] {
        &Kind::ALL
    }

    fn check(&self, tree: &Tree<'_>, ctx: &Context, out: &mut Sink) {
        if !tree.has_fs() {
            return;
        }
        if ctx.trusted.is_empty() {
            return check_well_formed(tree, out);
        }
        for c in verify_paths(std::slice::from_ref(&tree.fs_root), &ctx.trusted) {
            let shown = tree.display(&c.path);
            let compressed = !c.path.to_string_lossy().ends_with(".ko");
            let result = if compressed && c.path.is_file() {
                read_module(&c.path).and_then(|bytes| {
                    crate::sign::verify::verify(&bytes, &ctx.trusted)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            } else {
                c.result.map(|_| ())
            };
            if let Err(e) = result {
                out.push(shown, e);
            }
        }
    }
}

/// Without trusted certificates: each module has a signature of the
/// kernel's shape; one warning says the signers were not checked.
fn check_well_formed(tree: &Tree<'_>, out: &mut Sink) {
    let mut well_formed = 0usize;
    for path in module_files(tree, &tree.fs_root, out) {
        let shown = tree.display(&path);
        let bytes = match read_module(&path) {
            Ok(b) => b,
            Err(e) => {
                out.push(shown, e);
                continue;
            }
        };
        let result = if !bytes.starts_with(b"\x7fELF") {
            Err(SigError::NotElf("no ELF header"))
        } else {
            kmod::split(&bytes).and_then(|s| match s.cms {
                None => Err(SigError::Unsigned),
                Some(cms) => kmod::parse_cms(cms).map(|_| ()),
            })
        };
        match result {
            Ok(()) => well_formed += 1,
            Err(e) => out.push(shown, e.to_string()),
        }
    }
    if well_formed > 0 {
        out.warn(
            tree.display(&tree.modules_dir()),
            format!(
                "{well_formed} module signature(s) are well-formed, but no trusted certificate was given, so their signer could not be checked (give --cert or --kernel)"
            ),
        );
    }
}

/// One module in a release directory, with its `.modinfo`, and its
/// symbols when they were asked for.
struct Loaded {
    path: PathBuf,
    release: String,
    info: Result<Vec<(String, String)>, String>,
    symbols: Option<Result<ModuleSymbols, String>>,
}

/// Loads every module under the modules directory; modules outside a
/// release directory are reported by `modules-vermagic` only. Symbols are
/// read for the modules of the releases `symbols_for` says.
fn load(
    tree: &Tree<'_>,
    out: &mut Sink,
    report_strays: bool,
    symbols_for: &dyn Fn(&str) -> bool,
) -> Vec<Loaded> {
    let dir = tree.modules_dir();
    if !dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Vec::new();
    }
    let mut loaded = Vec::new();
    for path in module_files(tree, &dir, out) {
        let parts = components(&dir, &path);
        if parts.len() < 2 {
            if report_strays {
                out.push(
                    tree.display(&path),
                    format!(
                        "module lies directly in {}, not in a kernel release directory",
                        tree.display(&dir)
                    ),
                );
            }
            continue;
        }
        let bytes = read_module(&path);
        let info = bytes
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|b| modinfo(b));
        let symbols = symbols_for(&parts[0]).then(|| {
            let name = path
                .file_name()
                .and_then(|n| module_name(&n.to_string_lossy()))
                .unwrap_or_default();
            bytes.and_then(|b| module_symbols(&b, &name))
        });
        loaded.push(Loaded {
            path,
            release: parts[0].clone(),
            info,
            symbols,
        });
    }
    loaded
}

fn value<'a>(info: &'a [(String, String)], key: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub struct Vermagic;

impl Rule for Vermagic {
    fn name(&self) -> &'static str {
        "modules-vermagic"
    }

    fn description(&self) -> &'static str {
        "modules are for exactly one kernel release, and each module's vermagic names the release directory it lies in"
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn applies_to(&self) -> &'static [Kind] {
        &Kind::ALL
    }

    fn check(&self, tree: &Tree<'_>, ctx: &Context, out: &mut Sink) {
        let loaded = load(tree, out, true, &|_| false);
        if loaded.is_empty() {
            return;
        }
        let dir = tree.modules_dir();
        let releases = release_dirs(&dir);
        if releases.len() > 1 {
            out.push(
                tree.display(&dir),
                format!(
                    "{} kernel release directories ({}): modules must be built for exactly one kernel",
                    releases.len(),
                    releases.join(", ")
                ),
            );
        }
        warn_unknown_kernels(tree, ctx, &loaded, out);
        for m in loaded {
            let shown = tree.display(&m.path);
            let info = match &m.info {
                Err(e) => {
                    out.push(shown, e.clone());
                    continue;
                }
                Ok(info) => info,
            };
            match (value(info, "vermagic"), ctx.kernel_tree(&m.release)) {
                (None, _) => out.push(
                    shown,
                    "no `vermagic=` in .modinfo: the kernel refuses the module",
                ),
                (Some(v), Some(kernel)) if !kernel.accepts_vermagic(v) => out.push(
                    shown,
                    format!(
                        "vermagic {:?} is not that of kernel {}, {:?} (from {})",
                        v.trim_end(),
                        kernel.release,
                        kernel.vermagic.trim_end(),
                        kernel.dir.display()
                    ),
                ),
                (Some(v), None) if !vermagic_matches(v, &m.release) => out.push(
                    shown,
                    format!(
                        "vermagic {v:?} is not for kernel {}, the release directory it lies in",
                        m.release
                    ),
                ),
                _ => {}
            }
        }
    }
}

/// With kernel build trees known, one warning per release directory none
/// of them is for: its modules are checked by name only.
fn warn_unknown_kernels(tree: &Tree<'_>, ctx: &Context, loaded: &[Loaded], out: &mut Sink) {
    if ctx.kernel_trees.is_empty() {
        return;
    }
    let releases: BTreeSet<&str> = loaded.iter().map(|m| m.release.as_str()).collect();
    let known: Vec<&str> = ctx.kernel_trees.keys().map(String::as_str).collect();
    for release in releases {
        if ctx.kernel_tree(release).is_none() {
            out.warn(
                tree.display(&tree.modules_dir().join(release)),
                format!(
                    "no kernel build tree for release {release} (known: {}): its modules' vermagic and symbols were not checked against the kernel",
                    known.join(", ")
                ),
            );
        }
    }
}

pub struct Depends;

impl Rule for Depends {
    fn name(&self) -> &'static str {
        "modules-depends"
    }

    fn description(&self) -> &'static str {
        "every module dependency is provided by a module of the same release or by modules.builtin; with the kernel's build tree, every symbol a module uses is exported by the kernel or a module of the release"
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn applies_to(&self) -> &'static [Kind] {
        &Kind::ALL
    }

    fn check(&self, tree: &Tree<'_>, ctx: &Context, out: &mut Sink) {
        let loaded = load(tree, out, false, &|r| ctx.kernel_tree(r).is_some());
        let releases: BTreeSet<&str> = loaded.iter().map(|m| m.release.as_str()).collect();
        for release in releases {
            let here: Vec<&Loaded> = loaded.iter().filter(|m| m.release == release).collect();
            let kernel = ctx.kernel_tree(release);
            check_depends(tree, ctx, release, &here, kernel, out);
            if let Some(kernel) = kernel {
                check_symbols(tree, release, &here, kernel, out);
            }
        }
    }
}

/// The `depends=` names of the modules of one release directory.
fn check_depends(
    tree: &Tree<'_>,
    ctx: &Context,
    release: &str,
    here: &[&Loaded],
    kernel: Option<&KernelTree>,
    out: &mut Sink,
) {
    let dir = tree.modules_dir().join(release);
    let mut provided: BTreeSet<String> = kernel.map(KernelTree::module_names).unwrap_or_default();
    for m in here {
        let from_file = m
            .path
            .file_name()
            .and_then(|n| module_name(&n.to_string_lossy()));
        provided.extend(from_file);
        if let Ok(info) = &m.info
            && let Some(n) = value(info, "name")
        {
            provided.insert(normalize(n));
        }
    }
    let builtin: Option<BTreeSet<String>> = std::fs::read_to_string(dir.join("modules.builtin"))
        .ok()
        .map(|text| {
            text.lines()
                .filter_map(|l| l.trim().rsplit('/').next())
                .filter_map(module_name)
                .collect()
        });
    for m in here {
        let shown = tree.display(&m.path);
        let info = match &m.info {
            Ok(i) => i,
            Err(e) => {
                out.push(shown, e.clone());
                continue;
            }
        };
        let deps = value(info, "depends").unwrap_or_default();
        for dep in deps.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let n = normalize(dep);
            if provided.contains(&n)
                || builtin.as_ref().is_some_and(|b| b.contains(&n))
                || ctx.allow_in_tree_deps
            {
                continue;
            }
            let builtin_note = if builtin.is_some() {
                "modules.builtin does not list it"
            } else {
                "there is no modules.builtin"
            };
            let kernel_note = kernel.map_or(String::new(), |k| {
                format!(", nor is it a module of kernel {}", k.release)
            });
            out.push(
                shown.clone(),
                format!(
                    "depends on `{dep}`, which no module in {} provides and {builtin_note}{kernel_note} (allow the node's modules with --allow-in-tree-deps)",
                    tree.display(&dir)
                ),
            );
        }
    }
}

/// The symbols the modules of one release directory use, against the
/// kernel's exports and each other's.
fn check_symbols(
    tree: &Tree<'_>,
    release: &str,
    here: &[&Loaded],
    kernel: &KernelTree,
    out: &mut Sink,
) {
    let mut siblings = HashMap::new();
    for m in here {
        if let Some(Ok(syms)) = &m.symbols {
            siblings.extend(syms.exports.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let beside = tree.display(&tree.modules_dir().join(release));
    for m in here {
        // A module whose .modinfo cannot be read is reported by
        // check_depends already.
        let (Ok(info), Some(syms)) = (&m.info, &m.symbols) else {
            continue;
        };
        let shown = tree.display(&m.path);
        let syms = match syms {
            Ok(s) => s,
            Err(e) => {
                out.push(shown, e.clone());
                continue;
            }
        };
        let import_ns: Vec<&str> = info
            .iter()
            .filter(|(k, _)| k == "import_ns")
            .map(|(_, v)| v.as_str())
            .collect();
        let license = value(info, "license");
        for problem in unresolved(syms, license, &import_ns, &siblings, kernel, &beside) {
            out.push(shown.clone(), problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vermagic_matches_release_on_a_word_boundary() {
        assert!(vermagic_matches("6.1.0 SMP mod_unload", "6.1.0"));
        assert!(vermagic_matches("6.1.0", "6.1.0"));
        assert!(!vermagic_matches("6.1.0 SMP mod_unload", "6.1"));
        assert!(!vermagic_matches("6.1.0-talos SMP", "6.1.0"));
        assert!(!vermagic_matches("6.2.0 SMP", "6.1.0"));
    }

    #[test]
    fn modinfo_entries_are_split_on_nul() {
        let data = b"license=GPL\0\0depends=a,b-c\0vermagic=6.1.0 SMP mod_unload\0junk\0";
        let info = parse_modinfo(data);
        assert_eq!(value(&info, "depends"), Some("a,b-c"));
        assert_eq!(value(&info, "vermagic"), Some("6.1.0 SMP mod_unload"));
        assert_eq!(info.len(), 3);
    }

    #[test]
    fn module_names_drop_suffix_and_normalize_dashes() {
        assert_eq!(
            module_name("hello-world.ko").as_deref(),
            Some("hello_world")
        );
        assert_eq!(module_name("a.ko.zst").as_deref(), Some("a"));
        assert_eq!(module_name("a.o"), None);
        assert_eq!(module_name(".ko"), None);
    }

    #[test]
    fn modinfo_of_garbage_is_an_error_not_a_panic() {
        assert!(modinfo(b"").is_err());
        assert!(modinfo(b"\x7fELF\x02\x01\x01").is_err());
    }
}
