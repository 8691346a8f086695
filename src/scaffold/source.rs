//! The module's source archive for `composer new kmod`: found, verified,
//! and looked into for the directory the generated steps build with
//! `make -C /src M=<dir>`.
//!
//! Where the archive comes from, first that applies: `--source-file FILE`;
//! a `--source-mirror DIR` (`DIR/<sha256>` or `DIR/<file name of the
//! URL>`, as builds read mirrors); the `file://` source itself when that
//! file exists. Either way it is read through the build's own source code
//! (`exec::sources::fetch`, offline, into a temporary download cache), so
//! it is checked against both `--sha256` and `--sha512` exactly as the
//! build will check it. Without an archive nothing is checked and the
//! module directory is `--module-dir`, else the top of the source.
//!
//! Which directories hold a module, and how paths are counted: see
//! `archive.rs`.
//!
//! Invariant: reads only; the temporary copy is removed on return.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use regex::Regex;

use super::archive::Listing;
use crate::defs::schema::Source;
use crate::diag::{Span, display_path};
use crate::exec::sources::{self, SourceError, SourceOptions};

static SAFE_DIR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)*$").expect("constant pattern")
});

/// What `composer new kmod` was given about the source.
#[derive(Clone, Copy, Debug)]
pub struct SourceArgs<'a> {
    pub url: &'a str,
    pub sha256: &'a str,
    pub sha512: &'a str,
    pub file: Option<&'a Path>,
    pub mirror: Option<&'a Path>,
    pub module_dir: Option<&'a str>,
}

/// The directory the module is built in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleDir {
    /// Relative to the unpacked source top; `.` for the top itself.
    pub dir: String,
    /// `tar --strip-components` of the generated step: 0 unpacks the
    /// archive as it is.
    pub strip: usize,
    pub checked: Checked,
}

/// How far the module directory was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Found in the archive: the file (`linux/pcie/Kbuild`) that declares
    /// the module.
    Found {
        archive: String,
        declared_in: String,
    },
    /// `--module-dir`, a directory of the archive; the file there that
    /// declares a module, if one does.
    Given {
        archive: String,
        declared_in: Option<String>,
    },
    /// No archive to look into.
    Unchecked,
}

impl ModuleDir {
    /// `M=` of the generated steps (run in the source top, /tmp/build).
    pub fn make_path(&self) -> String {
        match self.dir.as_str() {
            "." => "$(pwd)".to_string(),
            d => format!("$(pwd)/{d}"),
        }
    }

    /// The comment above the build item, one line per element.
    pub fn comment(&self) -> Vec<String> {
        let shown = if self.dir == "." {
            "the top of the source".to_string()
        } else {
            self.dir.clone()
        };
        match &self.checked {
            Checked::Found { declared_in, .. } => vec![format!(
                "# M= is {shown}: {declared_in} declares the module (found in the source archive)."
            )],
            Checked::Given {
                declared_in: Some(f),
                ..
            } => vec![format!(
                "# M= is {shown} (--module-dir): {f} declares the module."
            )],
            Checked::Given {
                declared_in: None, ..
            } => vec![
                format!("# M= is {shown} (--module-dir), a directory of the source archive"),
                "# where no Kbuild or Makefile assigns obj-m.".to_string(),
            ],
            Checked::Unchecked => vec![
                format!("# M= is {shown}, NOT checked against the source (no archive was given):"),
                "# it must be the directory whose Kbuild or Makefile assigns obj-m".to_string(),
                "# (M=$(pwd)/driver when that is driver/).".to_string(),
            ],
        }
    }
}

/// Finds the module directory; the problems otherwise, for the user.
pub fn module_dir(args: &SourceArgs<'_>) -> Result<ModuleDir, Vec<String>> {
    let given = args.module_dir.map(normalize).transpose()?;
    let tmp = tempfile::tempdir().map_err(|e| vec![format!("a temporary directory: {e}")])?;
    let Some((path, archive)) = locate(args, tmp.path())? else {
        return Ok(ModuleDir {
            dir: given.unwrap_or_else(|| ".".to_string()),
            strip: 1,
            checked: Checked::Unchecked,
        });
    };
    let listing = Listing::read(&path)
        .map_err(|e| vec![format!("{archive}: cannot read it as a tar archive: {e}")])?;
    choose(&listing, given, archive).map_err(|e| vec![e])
}

/// `--module-dir` as a plain relative path, or a problem.
fn normalize(dir: &str) -> Result<String, Vec<String>> {
    let d = dir.trim_start_matches("./").trim_end_matches('/');
    if d.is_empty() || d == "." {
        return Ok(".".to_string());
    }
    let parent = d.split('/').any(|c| c == ".." || c == ".");
    if d.starts_with('/') || parent || !SAFE_DIR.is_match(d) {
        return Err(vec![format!(
            "--module-dir {dir}: a relative path inside the source (like linux/pcie), of letters, digits, `.`, `_`, `+`, `-` and `/`"
        )]);
    }
    Ok(d.to_string())
}

/// The verified archive's path and how to name it to the user; `None`
/// when there is no archive to look into.
fn locate(
    args: &SourceArgs<'_>,
    tmp: &Path,
) -> Result<Option<(std::path::PathBuf, String)>, Vec<String>> {
    let file_url = args.url.strip_prefix("file://").map(Path::new);
    let (url, mirrors, what) = if let Some(file) = args.file {
        let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let what = format!("the archive {} (--source-file)", file.display());
        (format!("file://{}", abs.display()), Vec::new(), what)
    } else if let Some(dir) = args.mirror {
        if !dir.is_dir() {
            return Err(vec![format!(
                "--source-mirror {}: not a directory",
                dir.display()
            )]);
        }
        let what = format!("the archive in {} (--source-mirror)", dir.display());
        (args.url.to_string(), vec![dir.display().to_string()], what)
    } else if let Some(file) = file_url.filter(|f| f.is_file()) {
        let what = format!("the source {}", display_path(file).display());
        (args.url.to_string(), Vec::new(), what)
    } else {
        return Ok(None);
    };
    let src = Source {
        url: url.clone(),
        destination: String::new(),
        sha256: args.sha256.to_string(),
        sha512: args.sha512.to_string(),
        span: Span::file_start(&Arc::from(Path::new("--source"))),
    };
    let opts = SourceOptions {
        dir: tmp.to_path_buf(),
        offline: true,
        mirrors,
    };
    match sources::fetch(&src, &opts) {
        Ok(path) => Ok(Some((path, what))),
        Err(e) => Err(vec![fetch_problem(args, &what, e)]),
    }
}

fn fetch_problem(args: &SourceArgs<'_>, what: &str, e: SourceError) -> String {
    match e {
        SourceError::Mismatch {
            algo,
            expected,
            actual,
            ..
        } => format!(
            "{what} does not match --{algo}: its {algo} is {actual}, --{algo} says {expected}"
        ),
        SourceError::Offline { .. } | SourceError::Fetch { .. }
            if args.file.is_none() && args.mirror.is_some() =>
        {
            let dir = args.mirror.unwrap_or(Path::new(".")).display();
            let name = args.url.rsplit('/').next().unwrap_or_default();
            format!(
                "--source-mirror {dir}: the archive is neither {dir}/{} nor {dir}/{name}",
                args.sha256
            )
        }
        SourceError::Fetch { reason, .. } => format!("{what}: {reason}"),
        other => format!("{what}: {other}"),
    }
}

/// Picks the module directory in `listing`: `given` if it is there, else
/// the one candidate.
fn choose(listing: &Listing, given: Option<String>, archive: String) -> Result<ModuleDir, String> {
    let candidates = listing.candidates();
    let list = |c: &BTreeMap<String, String>| {
        c.iter()
            .map(|(d, f)| format!("\n      {d} ({f})"))
            .collect::<String>()
    };
    let dir = match given {
        Some(dir) => {
            if !listing.dirs.contains(&dir) {
                let there = if candidates.is_empty() {
                    String::new()
                } else {
                    format!("; its module directories:{}", list(&candidates))
                };
                return Err(format!(
                    "--module-dir {dir}: no such directory in {archive}{there}"
                ));
            }
            let declared_in = candidates.get(&dir).cloned();
            return Ok(ModuleDir {
                dir,
                strip: listing.strip,
                checked: Checked::Given {
                    archive,
                    declared_in,
                },
            });
        }
        None => match candidates.len() {
            0 => {
                return Err(format!(
                    "no Kbuild or Makefile in {archive} assigns obj-m: give the module's directory with --module-dir DIR (relative to the unpacked source)"
                ));
            }
            1 => candidates.keys().next().cloned().unwrap_or_default(),
            _ => {
                return Err(format!(
                    "{archive} has several module directories; choose one with --module-dir DIR:{}",
                    list(&candidates)
                ));
            }
        },
    };
    if dir != "." && !SAFE_DIR.is_match(&dir) {
        return Err(format!(
            "the module directory `{dir}` of {archive} cannot be written in M= (only letters, digits, `.`, `_`, `+`, `-` and `/`)"
        ));
    }
    let declared_in = candidates.get(&dir).cloned().unwrap_or_default();
    Ok(ModuleDir {
        dir,
        strip: listing.strip,
        checked: Checked::Found {
            archive,
            declared_in,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dir_argument_is_a_plain_relative_path() {
        assert_eq!(normalize("./linux/pcie/").unwrap(), "linux/pcie");
        assert_eq!(normalize(".").unwrap(), ".");
        for bad in ["/abs", "../up", "a/../b", "a b", "a/$(x)", "a//b"] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_comment_says_whether_m_was_checked() {
        let m = |checked| ModuleDir {
            dir: "src".into(),
            strip: 1,
            checked,
        };
        let unchecked = m(Checked::Unchecked).comment().join("\n");
        assert!(unchecked.contains("NOT checked"), "{unchecked}");
        let found = m(Checked::Found {
            archive: "a".into(),
            declared_in: "src/Kbuild".into(),
        });
        assert_eq!(found.make_path(), "$(pwd)/src");
        assert!(found.comment()[0].contains("src/Kbuild declares the module"));
    }
}
