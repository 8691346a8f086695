//! A release directory's module index: depmod's `modules.dep`, and the
//! order it gives for loading a module.
//!
//! The modules lie in `<base>/lib/modules/<release>/` (or, on a merged-/usr
//! tree, `<base>/usr/lib/modules/<release>/`). `modules.dep` has one line
//! per module, `path/a.ko: path/b.ko path/c.ko`, paths relative to that
//! directory (an absolute one, as old depmods wrote, is taken under the
//! base). Each line lists every module the module needs, directly or not,
//! and depmod writes them dependants first: the last one is loaded first.
//! So the load order of a module is its line's list reversed, then the
//! module itself, exactly as libkmod builds its probe list (it prepends
//! each dependency while reading the line).
//!
//! Several directories make one index, searched in order: a module is
//! taken from the first that lists it ([`Index::merge`]). By default
//! ([`node_index`]) `composer kmod load` and `unload` read the directories
//! of the images `installed.json` lists for the release (each image's
//! `modprobe_dir`), then the system's `/lib/modules/<release>`, as
//! modprobe would.
//!
//! Invariant: names are in the kernel's form (`-` as `_`), taken from the
//! file names; a line that is not `path: paths` is an error at its line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::load::LoadError;
use super::snapshot::normalize;
use super::state::State;
use super::{Host, NodeError};
use crate::validate::modules::module_name;

/// One module of the index: where its file is, and the modules it needs
/// in the order `modules.dep` lists them (dependants first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub deps: Vec<(String, PathBuf)>,
}

/// The `modules.dep` of one or more release directories.
#[derive(Debug, Clone)]
pub struct Index {
    /// The `modules.dep` files, in search order.
    pub files: Vec<PathBuf>,
    entries: BTreeMap<String, Entry>,
}

impl Index {
    /// Reads `<base>/lib/modules/<release>/modules.dep` (or under `usr/`).
    pub fn read(base: &Path, release: &str) -> Result<Index, LoadError> {
        let dir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| base.join(d).join(release))
            .find(|d| d.is_dir())
            .ok_or_else(|| LoadError::NoRelease {
                base: base.to_path_buf(),
                release: release.to_string(),
                has: releases(base),
            })?;
        let file = dir.join("modules.dep");
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::NoIndex {
                    dir,
                    base: base.to_path_buf(),
                    release: release.to_string(),
                });
            }
            Err(source) => return Err(LoadError::Io { path: file, source }),
        };
        Index::parse(&dir, &file, &text, base)
    }

    /// Parses `text`, the `modules.dep` at `file` in `dir`; an absolute
    /// path in it is taken under `base`.
    pub fn parse(dir: &Path, file: &Path, text: &str, base: &Path) -> Result<Index, LoadError> {
        let bad = |line: usize, why: String| LoadError::Index {
            file: file.to_path_buf(),
            line,
            why,
        };
        let resolve = |p: &str| match p.strip_prefix('/') {
            Some(abs) => base.join(abs),
            None => dir.join(p),
        };
        let name_of = |line: usize, p: &str| {
            let file_name = p.rsplit('/').next().unwrap_or(p);
            module_name(file_name).ok_or_else(|| bad(line, format!("`{p}` is not a module file")))
        };
        let mut entries = BTreeMap::new();
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let (path, deps) = l
                .split_once(':')
                .ok_or_else(|| bad(i + 1, "expected `path.ko: dependency.ko ...`".into()))?;
            let name = name_of(i + 1, path.trim())?;
            let deps = deps
                .split_whitespace()
                .map(|d| Ok((name_of(i + 1, d)?, resolve(d))))
                .collect::<Result<Vec<_>, LoadError>>()?;
            let entry = Entry {
                name: name.clone(),
                path: resolve(path.trim()),
                deps,
            };
            if entries.insert(name.clone(), entry).is_some() {
                return Err(bad(i + 1, format!("`{name}` is listed twice")));
            }
        }
        Ok(Index {
            files: vec![file.to_path_buf()],
            entries,
        })
    }

    /// One index of `indexes`, searched in their order: a module listed
    /// by several is taken from the first.
    pub fn merge(indexes: Vec<Index>) -> Index {
        let mut out = Index {
            files: Vec::new(),
            entries: BTreeMap::new(),
        };
        for i in indexes {
            out.files.extend(i.files);
            for (name, e) in i.entries {
                out.entries.entry(name).or_insert(e);
            }
        }
        out
    }

    /// Whether the index lists `name`.
    pub fn has(&self, name: &str) -> bool {
        self.entries.contains_key(&normalize(name))
    }

    pub fn get(&self, name: &str) -> Result<&Entry, LoadError> {
        let name = normalize(name);
        self.entries
            .get(&name)
            .ok_or_else(|| self.unknown(&name, std::iter::empty()))
    }

    /// Fails on the first of `names` the index does not list.
    pub fn check(&self, names: &[String]) -> Result<(), LoadError> {
        names.iter().try_for_each(|n| self.get(n).map(|_| ()))
    }

    /// `name` is not listed: the error, suggesting the closest of the
    /// index's names and `others`.
    pub fn unknown<'a>(&'a self, name: &str, others: impl Iterator<Item = &'a str>) -> LoadError {
        let names = self.entries.keys().map(String::as_str).chain(others);
        LoadError::UnknownModule {
            files: self.files.clone(),
            hint: crate::diag::suggest(name, names).map(str::to_string),
            name: name.to_string(),
        }
    }

    /// The modules to load for `name`, first to last: its dependencies in
    /// the reverse of their `modules.dep` order, then itself.
    pub fn load_order(&self, name: &str) -> Result<Vec<(String, PathBuf)>, LoadError> {
        let e = self.get(name)?;
        let mut order: Vec<(String, PathBuf)> = e.deps.iter().rev().cloned().collect();
        order.push((e.name.clone(), e.path.clone()));
        Ok(order)
    }

    /// The modules of the index that need `name`.
    pub fn dependants(&self, name: &str) -> impl Iterator<Item = &str> {
        let name = normalize(name);
        self.entries
            .values()
            .filter(move |e| e.deps.iter().any(|(d, _)| *d == name))
            .map(|e| e.name.as_str())
    }
}

/// The index `composer kmod load` and `unload` use: the module directory
/// `base` (a node path) when given; else those of the images installed
/// for `release` under `state_dir`, then the system's (left out when it
/// has no `modules.dep` and an installed image's directory has one).
pub fn node_index(
    host: &Host,
    state_dir: &Path,
    release: &str,
    base: Option<&Path>,
) -> Result<Index, NodeError> {
    if let Some(b) = base {
        return Ok(Index::read(&host.path(b), release)?);
    }
    let state = State::read(host, state_dir)?;
    let mut dirs: Vec<&Path> = Vec::new();
    for i in state.images.iter().filter(|i| i.release == release) {
        if !dirs.contains(&i.modprobe_dir.as_path()) {
            dirs.push(&i.modprobe_dir);
        }
    }
    let mut indexes = dirs
        .iter()
        .map(|d| Index::read(&host.path(d), release))
        .collect::<Result<Vec<_>, _>>()?;
    if !dirs.contains(&Path::new("/")) {
        match Index::read(&host.path("/"), release) {
            Ok(i) => indexes.push(i),
            Err(e) if indexes.is_empty() => return Err(e.into()),
            Err(_) => {}
        }
    }
    Ok(Index::merge(indexes))
}

/// The release directories under `<base>/lib/modules` and `usr/lib/modules`.
fn releases(base: &Path) -> Vec<String> {
    let mut out = BTreeSet::new();
    for d in ["lib/modules", "usr/lib/modules"] {
        if let Ok(rd) = std::fs::read_dir(base.join(d)) {
            out.extend(
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str) -> Result<Index, LoadError> {
        let dir = Path::new("/b/lib/modules/6.1.0");
        Index::parse(dir, &dir.join("modules.dep"), text, Path::new("/b"))
    }

    fn names(order: Vec<(String, PathBuf)>) -> Vec<String> {
        order.into_iter().map(|(n, _)| n).collect()
    }

    /// A line of the real depmod's output for Debian's 6.1 kernel:
    /// twofish-avx needs the 3-way code, which needs the x86_64 one,
    /// which needs twofish_common; crypto_simd needs cryptd.
    const TWOFISH: &str = "kernel/arch/x86/crypto/twofish-avx-x86_64.ko: kernel/crypto/crypto_simd.ko kernel/crypto/cryptd.ko kernel/arch/x86/crypto/twofish-x86_64-3way.ko kernel/arch/x86/crypto/twofish-x86_64.ko kernel/crypto/twofish_common.ko\n";

    #[test]
    fn load_order_is_the_dependency_list_reversed_then_the_module() {
        let i = index(TWOFISH).unwrap();
        let order = i.load_order("twofish-avx-x86_64").unwrap();
        assert_eq!(
            names(order.clone()),
            [
                "twofish_common",
                "twofish_x86_64",
                "twofish_x86_64_3way",
                "cryptd",
                "crypto_simd",
                "twofish_avx_x86_64"
            ]
        );
        assert_eq!(
            order[0].1,
            Path::new("/b/lib/modules/6.1.0/kernel/crypto/twofish_common.ko")
        );
    }

    #[test]
    fn names_are_normalized_and_compressed_files_count() {
        let i = index("extra/hello-user.ko.zst: extra/hello_pcie.ko.xz\nextra/hello_pcie.ko.xz:\n")
            .unwrap();
        assert_eq!(
            names(i.load_order("hello_user").unwrap()),
            ["hello_pcie", "hello_user"]
        );
        assert_eq!(
            i.dependants("hello-pcie").collect::<Vec<_>>(),
            ["hello_user"]
        );
        assert_eq!(i.load_order("hello_pcie").unwrap().len(), 1);
    }

    #[test]
    fn merged_indexes_take_each_module_from_the_first_that_lists_it() {
        let ours = Index::parse(
            Path::new("/s/lib/modules/6.1.0"),
            Path::new("/s/lib/modules/6.1.0/modules.dep"),
            "updates/composer/x/hello_user.ko: host/kernel/hello_pcie.ko\n",
            Path::new("/s"),
        )
        .unwrap();
        let system = index("kernel/hello_pcie.ko:\nextra/hello_user.ko:\n").unwrap();
        let i = Index::merge(vec![ours, system]);
        assert_eq!(
            i.get("hello_user").unwrap().path,
            Path::new("/s/lib/modules/6.1.0/updates/composer/x/hello_user.ko")
        );
        assert_eq!(
            i.get("hello_pcie").unwrap().path,
            Path::new("/b/lib/modules/6.1.0/kernel/hello_pcie.ko")
        );
        let e = i.get("nosuch").unwrap_err().to_string();
        assert!(
            e.starts_with("/s/lib/modules/6.1.0/modules.dep, /b/lib/modules/6.1.0/modules.dep: no module `nosuch`"),
            "{e}"
        );
    }

    #[test]
    fn absolute_paths_are_taken_under_the_base() {
        let i = index("/lib/modules/6.1.0/extra/a.ko:\n").unwrap();
        assert_eq!(
            i.get("a").unwrap().path,
            Path::new("/b/lib/modules/6.1.0/extra/a.ko")
        );
    }

    #[test]
    fn unknown_module_suggests_a_close_name() {
        let i = index("extra/hello_user.ko:\n").unwrap();
        let e = i.load_order("hello_usr").unwrap_err().to_string();
        assert_eq!(
            e,
            "/b/lib/modules/6.1.0/modules.dep: no module `hello_usr`; did you mean `hello_user`?"
        );
    }

    #[test]
    fn broken_index_lines_are_errors_at_their_line() {
        let e = index("a.ko:\nno colon here\n").unwrap_err().to_string();
        assert!(
            e.starts_with("/b/lib/modules/6.1.0/modules.dep:2: expected"),
            "{e}"
        );
        let e = index("a.ko: b.txt\n").unwrap_err().to_string();
        assert!(e.contains(":1: `b.txt` is not a module file"), "{e}");
        let e = index("x/a.ko:\ny/a.ko:\n").unwrap_err().to_string();
        assert!(e.contains(":2: `a` is listed twice"), "{e}");
    }

    #[test]
    fn missing_release_names_the_ones_there() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("lib/modules/6.1.0-56-cloud-amd64")).unwrap();
        let e = Index::read(t.path(), "6.1.0-57-cloud-amd64")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "no modules for kernel 6.1.0-57-cloud-amd64 there (it has: 6.1.0-56-cloud-amd64)"
            ),
            "{e}"
        );
        let e = Index::read(t.path(), "6.1.0-56-cloud-amd64")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no modules.dep (make it with: depmod -b"), "{e}");
    }
}
