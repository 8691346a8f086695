//! What a module's source archive holds, for `composer new kmod`: its
//! directories and which of them hold a kernel module, paths relative to
//! the unpacked source top.
//!
//! Which directories hold a module: those whose `Kbuild` or `Makefile`
//! assigns `obj-m` (`obj-m += x.o`, `obj-m := x.o`, `obj-m = x.o`), or
//! assigns `obj-$(CONFIG_X)` while that directory's `Kbuild` or `Makefile`
//! sets `CONFIG_X` to `m` (otherwise `CONFIG_X` comes from the kernel's
//! configuration, which does not know an out-of-tree driver's options). A
//! module directory that an enclosing one descends into on an `obj-` line
//! of its own (`obj-m += sub/`) is built through it, so it is no
//! candidate. Lines are read one by one: a continued line (`\`) counts for
//! its first line only.
//!
//! Paths are relative to the unpacked source top: the archive's single
//! top-level directory is dropped, as the generated step's
//! `tar --strip-components=N` does; an archive whose entries are not all
//! under one directory is unpacked as it is (`strip` 0). Components are
//! counted as GNU tar counts them: every `/`-separated name, `.` included,
//! so an archive made by `tar -czf x.tgz ./top` (entries `./top/…`) has
//! its top directory dropped with `--strip-components=2`, while `top/./a`
//! unpacks to `top/a`.
//!
//! Archives: tar, plain or compressed with gzip, xz, zstd or bzip2,
//! recognised by their first bytes, not by their names.
//!
//! Invariant: reads only; build files over 1 MiB are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

/// Build files larger than this are not read (no Kbuild is).
const MAX_BUILD_FILE: u64 = 1 << 20;
const BUILD_FILES: [&str; 2] = ["Kbuild", "Makefile"];

static OBJ_M: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)^[ \t]*obj-m[ \t]*(?:\+|:|::|\?)?=").expect("constant pattern")
});
static OBJ_CONFIG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)^[ \t]*obj-\$[({](CONFIG_[A-Za-z0-9_]+)[)}][ \t]*(?:\+|:|::|\?)?=")
        .expect("constant pattern")
});
static OBJ_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)^[ \t]*obj-(?:m|y|\$[({]CONFIG_[A-Za-z0-9_]+[)}])[ \t]*(?:\+|:|::|\?)?=(.*)$")
        .expect("constant pattern")
});

/// What an archive holds, paths relative to the unpacked source top.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every directory, `.` (the top) included.
    pub dirs: BTreeSet<String>,
    /// `Kbuild` and `Makefile` contents by path.
    build_files: BTreeMap<String, String>,
    /// `tar --strip-components` that unpacks the archive at the source top.
    pub strip: usize,
}

impl Listing {
    /// Reads the tar archive at `path`.
    pub fn read(path: &Path) -> io::Result<Listing> {
        let mut archive = tar::Archive::new(open(path)?);
        let mut dirs: Vec<Vec<String>> = Vec::new();
        let mut files: Vec<(Vec<String>, Option<String>)> = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
                continue; // pax and GNU headers, devices
            }
            let Some(parts) = parts(&entry.path_bytes()) else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(parts);
                continue;
            }
            let is_build_file = parts
                .last()
                .is_some_and(|n| BUILD_FILES.contains(&n.as_str()));
            let text = if kind.is_file() && is_build_file && entry.size() <= MAX_BUILD_FILE {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            } else {
                None
            };
            files.push((parts, text));
        }
        Ok(Listing::from_entries(dirs, files))
    }

    fn from_entries(dirs: Vec<Vec<String>>, files: Vec<(Vec<String>, Option<String>)>) -> Listing {
        let strip = strip_count(&dirs, &files);
        // What GNU tar creates for an entry: its components after `strip`,
        // without `.`.
        let unpacked = |p: &[String]| -> Vec<String> {
            p.iter()
                .skip(strip)
                .filter(|c| *c != ".")
                .cloned()
                .collect()
        };
        let mut listing = Listing {
            strip,
            ..Listing::default()
        };
        listing.dirs.insert(".".to_string());
        for d in &dirs {
            let d = unpacked(d);
            for end in 1..=d.len() {
                listing.dirs.insert(d[..end].join("/"));
            }
        }
        for (p, text) in files {
            let p = unpacked(&p);
            for end in 1..p.len() {
                listing.dirs.insert(p[..end].join("/"));
            }
            if let Some(text) = text
                && !p.is_empty()
            {
                listing.build_files.insert(p.join("/"), text);
            }
        }
        listing
    }

    /// Module directories → the file that declares the module.
    pub fn candidates(&self) -> BTreeMap<String, String> {
        let mut found = BTreeMap::new();
        for dir in &self.dirs {
            if let Some(file) = self.declaring_file(dir) {
                found.insert(dir.clone(), file);
            }
        }
        let reached: Vec<String> = found
            .keys()
            .filter(|d| found.keys().any(|outer| self.descends_into(outer, d)))
            .cloned()
            .collect();
        for d in reached {
            found.remove(&d);
        }
        found
    }

    /// The build files of `dir`, Kbuild first (kbuild reads it first).
    fn texts(&self, dir: &str) -> Vec<(String, &str)> {
        BUILD_FILES
            .iter()
            .map(|f| in_dir(dir, f))
            .filter_map(|p| self.build_files.get(&p).map(|t| (p, t.as_str())))
            .collect()
    }

    fn declaring_file(&self, dir: &str) -> Option<String> {
        let texts = self.texts(dir);
        let sets_m = |config: &str| {
            let re = Regex::new(&format!(
                r"(?m)^[ \t]*(?:export[ \t]+)?{config}[ \t]*(?:\+|:|::|\?)?=[ \t]*m[ \t]*(?:#.*)?$"
            ))
            .expect("a config name is a plain identifier");
            texts.iter().any(|(_, t)| re.is_match(t))
        };
        texts
            .iter()
            .find(|(_, t)| OBJ_M.is_match(t) || OBJ_CONFIG.captures_iter(t).any(|c| sets_m(&c[1])))
            .map(|(p, _)| p.clone())
    }

    /// Whether a build file of `outer` names `inner` on an `obj-` line.
    fn descends_into(&self, outer: &str, inner: &str) -> bool {
        let prefix = if outer == "." {
            String::new()
        } else {
            format!("{outer}/")
        };
        let Some(rel) = inner
            .strip_prefix(&prefix)
            .filter(|r| !r.is_empty() && outer != inner)
        else {
            return false;
        };
        self.texts(outer).iter().any(|(_, t)| {
            OBJ_LINE.captures_iter(t).any(|c| {
                c[1].split_whitespace()
                    .filter_map(|w| w.strip_suffix('/'))
                    .any(|w| w.trim_start_matches("./") == rel)
            })
        })
    }
}

fn in_dir(dir: &str, name: &str) -> String {
    if dir == "." {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `--strip-components` that drops the archive's single top directory
/// together with the `./` components every entry starts with (GNU tar
/// counts them); 0 when the entries are not all in one directory.
fn strip_count(dirs: &[Vec<String>], files: &[(Vec<String>, Option<String>)]) -> usize {
    let all = || dirs.iter().chain(files.iter().map(|(p, _)| p));
    let dots = all()
        .map(|p| p.iter().take_while(|c| *c == ".").count())
        .min()
        .unwrap_or(0);
    let tops: BTreeSet<&String> = all().filter_map(|p| p.get(dots)).collect();
    let top_file = files.iter().any(|(p, _)| p.len() == dots + 1);
    if tops.len() == 1 && !top_file {
        dots + 1
    } else {
        0
    }
}

/// An entry's path as GNU tar counts its components: the names between
/// slashes, `.` included, empty ones (leading, doubled or trailing `/`)
/// not. `None` for a path with `..` (GNU tar does not unpack it) or no
/// name.
fn parts(path: &[u8]) -> Option<Vec<String>> {
    let out: Vec<String> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let parent = out.iter().any(|c| c == "..");
    (!parent && !out.is_empty()).then_some(out)
}

/// The archive's tar stream, decompressed by its first bytes.
fn open(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = fs::File::open(path)?;
    let mut magic = [0u8; 6];
    let n = f.read(&mut magic)?;
    f.rewind()?;
    let magic = &magic[..n];
    let r = BufReader::new(f);
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(r))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
    } else if magic.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(r))
    } else {
        Box::new(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(entries: &[(&str, &str)]) -> Listing {
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for (path, text) in entries {
            let p: Vec<String> = path
                .trim_end_matches('/')
                .split('/')
                .map(str::to_string)
                .collect();
            if path.ends_with('/') {
                dirs.push(p);
            } else {
                let build = BUILD_FILES.contains(&p.last().unwrap().as_str());
                files.push((p, build.then(|| text.to_string())));
            }
        }
        Listing::from_entries(dirs, files)
    }

    fn candidates(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        listing(entries).candidates().into_iter().collect()
    }

    #[test]
    fn obj_m_in_kbuild_or_makefile_makes_a_module_directory() {
        let found = candidates(&[
            ("d-1/", ""),
            ("d-1/README", ""),
            ("d-1/src/Kbuild", "obj-m += foo.o\n"),
            (
                "d-1/b/Makefile",
                "ifneq ($(KERNELRELEASE),)\n\tobj-m := bar.o\nendif\n",
            ),
            (
                "d-1/c/Makefile",
                "all:\n\t$(MAKE) -C $(KDIR) M=$(PWD)\n# obj-m += no.o\n",
            ),
            ("d-1/d/Kbuild", "obj-y += builtin.o\nobj-m-x = no\n"),
        ]);
        assert_eq!(
            found,
            [
                ("b".to_string(), "b/Makefile".to_string()),
                ("src".to_string(), "src/Kbuild".to_string())
            ]
        );
    }

    #[test]
    fn obj_config_counts_only_when_the_directory_sets_it_to_m() {
        let found = candidates(&[
            ("t/a/Kbuild", "obj-$(CONFIG_A) += a.o\n"),
            ("t/a/Makefile", "export CONFIG_A := m\n"),
            ("t/b/Kbuild", "obj-$(CONFIG_B) += b.o\n"),
            (
                "t/c/Kbuild",
                "obj-${CONFIG_C} += c.o\nCONFIG_C ?= m # module\n",
            ),
        ]);
        assert_eq!(
            found,
            [
                ("a".to_string(), "a/Kbuild".to_string()),
                ("c".to_string(), "c/Kbuild".to_string())
            ]
        );
    }

    #[test]
    fn a_directory_the_top_kbuild_descends_into_is_no_candidate() {
        let found = candidates(&[
            ("t/Kbuild", "obj-m += sub/ other.o\n"),
            ("t/sub/Kbuild", "obj-m += x.o\n"),
            ("t/lone/Kbuild", "obj-m += y.o\n"),
        ]);
        assert_eq!(
            found,
            [
                (".".to_string(), "Kbuild".to_string()),
                ("lone".to_string(), "lone/Kbuild".to_string())
            ]
        );
    }

    #[test]
    fn an_archive_without_one_top_directory_is_not_stripped() {
        let l = listing(&[("Kbuild", "obj-m += x.o\n"), ("src/x.c", "")]);
        assert_eq!(l.strip, 0);
        assert_eq!(l.candidates().keys().collect::<Vec<_>>(), ["."]);
        assert!(l.dirs.contains("src"));
        let l = listing(&[("top/", ""), ("top/a/b/c.c", "")]);
        assert_eq!(l.strip, 1);
        assert_eq!(l.dirs.iter().collect::<Vec<_>>(), [".", "a", "a/b"]);
    }

    #[test]
    fn a_leading_dot_counts_as_a_component_as_gnu_tar_counts_it() {
        let l = listing(&[
            ("./", ""),
            ("./top/", ""),
            ("./top/sub/Kbuild", "obj-m += x.o\n"),
        ]);
        assert_eq!(l.strip, 2);
        assert_eq!(l.candidates().keys().collect::<Vec<_>>(), ["sub"]);
        let l = listing(&[
            ("./", ""),
            ("./README", ""),
            ("./sub/Kbuild", "obj-m += x.o\n"),
        ]);
        assert_eq!(l.strip, 0);
        assert_eq!(l.candidates().keys().collect::<Vec<_>>(), ["sub"]);
        let l = listing(&[("top/./a/Kbuild", "obj-m += x.o\n")]);
        assert_eq!(l.strip, 1);
        assert_eq!(l.candidates().keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn entry_paths_are_split_as_gnu_tar_splits_them() {
        let p = |s: &str| parts(s.as_bytes());
        assert_eq!(p("./top//a/").unwrap(), [".", "top", "a"]);
        assert_eq!(p("/abs/x").unwrap(), ["abs", "x"]);
        assert_eq!(p("a/../b"), None);
        assert_eq!(p("/"), None);
    }
}
