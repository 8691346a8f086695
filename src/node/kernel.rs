//! What the node's kernel accepts, read from the node itself (a node has
//! no build tree as a rule, so each fact has a fallback):
//!
//! | fact | read from, in order |
//! |---|---|
//! | trusted certificates | `--cert` / `--kernel` files; else the kernel image of the release: `/boot/vmlinuz-<release>`, `/lib/modules/<release>/vmlinuz`, `/usr/lib/modules/<release>/vmlinuz` (keys enrolled with MOK are not in it) |
//! | vermagic | the kernel build tree at `/lib/modules/<release>/build` (`Module.symvers`, Debian's linux-headers) as `validate::kernel_tree` computes it; else an in-tree module's `vermagic=`; else only the release is checked |
//! | exported symbols | that build tree's `Module.symvers`; else, for the running kernel, `/proc/kallsyms` (`__ksymtab_<name>`: vmlinux and loaded modules) with `modules.symbols` (what in-tree modules export); else not checked. Without `Module.symvers`, GPL-only exports and namespaces are not known |
//! | modules modprobe finds | `modules.dep` and `modules.builtin` of `/lib/modules/<release>` (and of composer's own directory), the build tree's module names |
//!
//! Invariant: every fact not known is named in [`KernelFacts::unchecked`],
//! so the caller can say what was not checked.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::{Host, NodeError};
use crate::sign::verify::Trusted;
use crate::validate::kernel_tree::{Export, KernelTree, is_kernel_tree};
use crate::validate::modules::{modinfo, module_name, read_module};

/// The certificates modules are checked against.
#[derive(Clone, Debug)]
pub struct Anchors {
    pub certs: Vec<Trusted>,
    /// The files they were read from, for messages.
    pub from: String,
}

/// The trust anchors: the given files, or by default the release's kernel
/// image. A given file that cannot be read is an error; no default found
/// is `Ok(Err(why))`.
pub fn anchors(
    host: &Host,
    release: &str,
    certs: &[PathBuf],
    kernels: &[PathBuf],
) -> Result<Result<Anchors, String>, NodeError> {
    if !certs.is_empty() || !kernels.is_empty() {
        let mut all = Vec::new();
        for c in certs {
            all.extend(Trusted::read_file(c).map_err(|e| NodeError::Input(format!("--cert {e}")))?);
        }
        for k in kernels {
            all.extend(
                Trusted::read_kernel(k).map_err(|e| NodeError::Input(format!("--kernel {e}")))?,
            );
        }
        let from: Vec<String> = certs
            .iter()
            .chain(kernels)
            .map(|p| p.display().to_string())
            .collect();
        return Ok(Ok(Anchors {
            certs: all,
            from: from.join(", "),
        }));
    }
    let places = [
        format!("/boot/vmlinuz-{release}"),
        format!("/lib/modules/{release}/vmlinuz"),
        format!("/usr/lib/modules/{release}/vmlinuz"),
    ];
    let mut why = Vec::new();
    for p in &places {
        let path = host.path(p);
        if !path.is_file() {
            continue;
        }
        match Trusted::read_kernel(&path) {
            Ok(certs) => {
                return Ok(Ok(Anchors {
                    certs,
                    from: p.clone(),
                }));
            }
            Err(e) => why.push(e),
        }
    }
    if why.is_empty() {
        why.push(format!("no kernel image at {}", places.join(", ")));
    }
    Ok(Err(why.join("; ")))
}

/// What the kernel of one release accepts.
#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub release: String,
    /// The vermagic a module must carry exactly, and where it was read.
    pub vermagic: Option<(String, String)>,
    /// The kernel's exports (vmlinux and its modules), when known.
    pub exports: Option<KernelTree>,
    /// Names of the modules modprobe finds (`-` as `_`), when known.
    pub modules: Option<BTreeSet<String>>,
    /// What is not checked, and why; one sentence each.
    pub unchecked: Vec<String>,
}

/// Reads the facts of `release` from the node. `module_dirs` are the
/// module directories to read (host paths of `<base>/lib/modules/<release>`:
/// the system's first); entries under one of `ignore` (paths relative to
/// their directory: the images being replaced) are left out. `running`:
/// `release` is the running kernel's, so `/proc/kallsyms` is its.
pub fn facts(
    host: &Host,
    release: &str,
    running: bool,
    module_dirs: &[PathBuf],
    ignore: &[PathBuf],
) -> KernelFacts {
    let mut k = KernelFacts {
        release: release.to_string(),
        vermagic: None,
        exports: None,
        modules: None,
        unchecked: Vec::new(),
    };
    let system = host.path(format!("/lib/modules/{release}"));
    let build = host.follow(&system.join("build"));
    if is_kernel_tree(&build) {
        match KernelTree::read(&build) {
            Ok(t) => {
                k.vermagic = Some((t.vermagic.clone(), build.display().to_string()));
                k.exports = Some(t);
            }
            Err(e) => k
                .unchecked
                .push(format!("the kernel build tree is not used: {e}")),
        }
    }
    let listed = listed_modules(module_dirs, ignore);
    if let Some((names, _)) = &listed {
        let mut all = names.clone();
        if let Some(t) = &k.exports {
            all.extend(t.module_names());
        }
        k.modules = Some(all);
    } else {
        k.unchecked.push(format!(
            "module dependencies are not checked: {} has no modules.dep",
            system.display()
        ));
    }
    if k.vermagic.is_none() {
        let first = listed
            .as_ref()
            .and_then(|(_, files)| files.first().cloned());
        k.vermagic = first
            .or_else(|| first_module(&system.join("kernel")))
            .and_then(|p| {
                let v = read_module(&p).ok().and_then(|b| modinfo(&b).ok())?;
                let v = v.into_iter().find(|(key, _)| key == "vermagic")?.1;
                Some((v, p.display().to_string()))
            });
        if k.vermagic.is_none() {
            k.unchecked.push(format!(
                "vermagic is checked against the release only: kernel {release} has no build tree and no module of its own to compare with"
            ));
        }
    }
    if k.exports.is_none() {
        k.exports = kallsyms_exports(host, release, running, module_dirs, &k);
        match &k.exports {
            Some(_) => k.unchecked.push(
                "GPL-only exports and symbol namespaces are not checked: /proc/kallsyms does not tell them (a kernel build tree at /lib/modules/<release>/build does)".into(),
            ),
            None => k.unchecked.push(format!(
                "symbols are not checked: no kernel build tree at {} and {}",
                build.display(),
                if running {
                    "/proc/kallsyms cannot be read or lists no exports"
                } else {
                    "/proc/kallsyms is another kernel's"
                }
            )),
        }
    }
    k
}

/// The names in the `modules.dep` and `modules.builtin` files of `dirs`,
/// and the files `modules.dep` lists (for a vermagic), or `None` when no
/// directory has a `modules.dep`.
fn listed_modules(
    dirs: &[PathBuf],
    ignore: &[PathBuf],
) -> Option<(BTreeSet<String>, Vec<PathBuf>)> {
    let mut names = BTreeSet::new();
    let mut files = Vec::new();
    let mut any = false;
    for dir in dirs {
        if let Ok(text) = std::fs::read_to_string(dir.join("modules.dep")) {
            any = true;
            for line in text.lines() {
                let Some((path, _)) = line.split_once(':') else {
                    continue;
                };
                let rel = Path::new(path.trim());
                if ignore.iter().any(|i| rel.starts_with(i)) {
                    continue;
                }
                let file = rel.file_name().map(|n| n.to_string_lossy().into_owned());
                names.extend(file.as_deref().and_then(module_name));
                if rel.starts_with("kernel") || rel.starts_with("host/kernel") {
                    files.push(dir.join(rel));
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("modules.builtin")) {
            names.extend(
                text.lines()
                    .filter_map(|l| l.trim().rsplit('/').next())
                    .filter_map(module_name),
            );
        }
    }
    files.retain(|f| f.is_file());
    any.then_some((names, files))
}

fn first_module(dir: &Path) -> Option<PathBuf> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .find(|e| {
            e.file_type().is_file() && module_name(&e.file_name().to_string_lossy()).is_some()
        })
        .map(|e| e.into_path())
}

/// The running kernel's exports from `/proc/kallsyms`, with what
/// `modules.symbols` says the modules export.
fn kallsyms_exports(
    host: &Host,
    release: &str,
    running: bool,
    module_dirs: &[PathBuf],
    k: &KernelFacts,
) -> Option<KernelTree> {
    if !running {
        return None;
    }
    let text = std::fs::read_to_string(host.path("/proc/kallsyms")).ok()?;
    let mut exports: HashMap<String, Export> = HashMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(_), Some(sym)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Some(name) = sym.strip_prefix("__ksymtab_") else {
            continue;
        };
        let module = f
            .next()
            .map(|m| m.trim_matches(|c| c == '[' || c == ']').to_string())
            .unwrap_or_else(|| "vmlinux".to_string());
        exports.insert(name.to_string(), export(module));
    }
    if !exports.values().any(Export::in_vmlinux) {
        return None;
    }
    for dir in module_dirs {
        let text = std::fs::read_to_string(dir.join("modules.symbols")).unwrap_or_default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            if let (Some("alias"), Some(sym), Some(module)) = (f.next(), f.next(), f.next())
                && let Some(name) = sym.strip_prefix("symbol:")
            {
                exports
                    .entry(name.to_string())
                    .or_insert_with(|| export(module.to_string()));
            }
        }
    }
    Some(KernelTree {
        dir: host.path(format!("/lib/modules/{release}")),
        release: release.to_string(),
        vermagic: k.vermagic.as_ref().map(|v| v.0.clone()).unwrap_or_default(),
        exports,
        exports_from: "/proc/kallsyms, modules.symbols".into(),
    })
}

fn export(module: String) -> Export {
    Export {
        module,
        gpl_only: false,
        namespace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    #[test]
    fn kallsyms_and_modules_symbols_give_the_running_kernels_exports() {
        let d = node(&[
            (
                "proc/kallsyms",
                "0000000000000000 r __ksymtab_printk\n0000000000000000 r __ksymtab_tun_get [tun]\n0000000000000000 T schedule\n",
            ),
            (
                "lib/modules/6.1.0/modules.dep",
                "kernel/drivers/net/tun.ko:\n",
            ),
            (
                "lib/modules/6.1.0/modules.symbols",
                "alias symbol:drm_open drm\n",
            ),
            (
                "lib/modules/6.1.0/modules.builtin",
                "kernel/fs/ext4/ext4.ko\n",
            ),
        ]);
        let host = Host::new(d.path());
        let dirs = [host.path("/lib/modules/6.1.0")];
        let k = facts(&host, "6.1.0", true, &dirs, &[]);
        let t = k.exports.as_ref().unwrap();
        assert!(t.export("printk").unwrap().in_vmlinux());
        assert_eq!(t.export("tun_get").unwrap().module, "tun");
        assert_eq!(t.export("drm_open").unwrap().module, "drm");
        assert!(t.export("schedule").is_none(), "not exported");
        let mods = k.modules.unwrap();
        assert!(mods.contains("tun") && mods.contains("ext4"), "{mods:?}");
        assert!(
            k.unchecked.iter().any(|u| u.contains("GPL-only")),
            "{:?}",
            k.unchecked
        );

        let k = facts(&host, "6.1.0", false, &dirs, &[]);
        assert!(k.exports.is_none());
        assert!(
            k.unchecked.iter().any(|u| u.contains("another kernel's")),
            "{:?}",
            k.unchecked
        );
    }

    #[test]
    fn the_images_being_replaced_are_not_the_kernels_modules() {
        let d = node(&[(
            "lib/modules/6.1.0/modules.dep",
            "updates/composer/x/a.ko:\nkernel/b.ko:\n",
        )]);
        let host = Host::new(d.path());
        let dirs = [host.path("/lib/modules/6.1.0")];
        let k = facts(
            &host,
            "6.1.0",
            false,
            &dirs,
            &[PathBuf::from("updates/composer/x")],
        );
        assert_eq!(
            k.modules.unwrap().into_iter().collect::<Vec<_>>(),
            vec!["b"]
        );
    }

    #[test]
    fn without_a_default_kernel_image_the_places_are_named() {
        let d = node(&[]);
        let a = anchors(&Host::new(d.path()), "6.1.0", &[], &[]).unwrap();
        let why = a.unwrap_err();
        assert!(
            why.contains("/boot/vmlinuz-6.1.0") && why.contains("/usr/lib/modules/6.1.0/vmlinuz"),
            "{why}"
        );
        let e = anchors(
            &Host::new(d.path()),
            "6.1.0",
            &[d.path().join("none.pem")],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("--cert "), "{e}");
    }
}
