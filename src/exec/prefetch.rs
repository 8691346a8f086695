//! The sources of a whole plan at once, before any stage runs: every
//! source of the given stages fetched into the download cache and checked
//! (sha256 and sha512, see `sources`), and a source mirror directory seeded
//! from the download cache (`composer fetch --to DIR`).
//!
//! Invariants:
//! - Every source is tried, even after another failed: the error names
//!   every source that cannot be had, with its stages, URL and reason.
//! - A source that several stages declare (same URL and digests) is
//!   fetched once and reported once, with all its stages.
//! - A mirror is written only from verified copies in the download cache,
//!   each file written aside (a temporary file of its own, created anew
//!   and removed when anything fails) and renamed into place:
//!   `DIR/<sha256>` never holds other bytes. `DIR/<file name>` is a hard
//!   link to it (a copy where links cannot be made); a file name two
//!   sources of one plan share keeps the first source, and the other is
//!   reachable by its sha256 alone, which mirrors are asked for first.
//! - What a run over an existing mirror reports as copied is what it
//!   wrote: entries already there with the right content are left alone.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::sources::{self, Origin, SourceError, SourceOptions};
use crate::defs::load::Package;
use crate::defs::schema::Source;

/// A source some stages of a plan need.
#[derive(Clone, Debug)]
pub struct Wanted<'d> {
    pub source: &'d Source,
    /// The stages that declare it, in plan order.
    pub stages: Vec<String>,
}

/// Every source the packages declare, each once, in declaration order.
pub fn wanted<'d>(packages: impl IntoIterator<Item = &'d Package>) -> Vec<Wanted<'d>> {
    let mut out: Vec<Wanted<'d>> = Vec::new();
    let mut seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for package in packages {
        let stage = &package.pkg.name.value;
        for source in package.pkg.steps.iter().flat_map(|s| &s.sources) {
            let id = (
                source.url.as_str(),
                source.sha256.as_str(),
                source.sha512.as_str(),
            );
            match seen.get(&id) {
                Some(&i) => {
                    if !out[i].stages.contains(stage) {
                        out[i].stages.push(stage.clone());
                    }
                }
                None => {
                    seen.insert(id, out.len());
                    out.push(Wanted {
                        source,
                        stages: vec![stage.clone()],
                    });
                }
            }
        }
    }
    out
}

/// A source at hand: verified, in the download cache.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub url: String,
    /// The last component of the URL (what a mirror also serves it as).
    pub file_name: String,
    pub sha256: String,
    pub stages: Vec<String>,
    /// The verified copy in the download cache.
    pub path: PathBuf,
    pub origin: Origin,
}

/// A source that cannot be had, and why.
#[derive(Debug)]
pub struct Problem {
    pub stages: Vec<String>,
    pub error: SourceError,
}

/// Every source of a plan that cannot be had.
#[derive(Debug)]
pub struct Unavailable {
    pub problems: Vec<Problem>,
    /// How many sources were wanted.
    pub total: usize,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} cannot be had:",
            self.problems.len(),
            crate::diag::plural(self.total, "source")
        )?;
        for p in &self.problems {
            let text = p.error.to_string().replace('\n', "\n      ");
            let noun = if p.stages.len() == 1 {
                "stage"
            } else {
                "stages"
            };
            write!(f, "\n  {noun} {}: {text}", p.stages.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for Unavailable {}

/// Fetches and checks every wanted source, calling `on` for each one at
/// hand; fails naming every one that is not.
pub fn fetch_all(
    wanted: &[Wanted<'_>],
    opts: &SourceOptions,
    on: &mut dyn FnMut(&Fetched),
) -> Result<Vec<Fetched>, Unavailable> {
    let mut fetched = Vec::new();
    let mut problems = Vec::new();
    for w in wanted {
        match sources::obtain(w.source, opts) {
            Ok((path, origin)) => {
                let f = Fetched {
                    url: w.source.url.clone(),
                    file_name: file_name(&w.source.url).to_string(),
                    sha256: w.source.sha256.clone(),
                    stages: w.stages.clone(),
                    path,
                    origin,
                };
                on(&f);
                fetched.push(f);
            }
            Err(error) => problems.push(Problem {
                stages: w.stages.clone(),
                error,
            }),
        }
    }
    if problems.is_empty() {
        Ok(fetched)
    } else {
        Err(Unavailable {
            problems,
            total: wanted.len(),
        })
    }
}

/// The last component of a URL, as mirrors serve a source besides its sha256.
pub fn file_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or_default()
}

/// What seeding a mirror did with one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seeded {
    /// Written as `DIR/<sha256>` and `DIR/<file name>`.
    Copied,
    /// Both entries were there already with the right content.
    AlreadyThere,
    /// Kept as `DIR/<sha256>` only: the file name is that URL's, an
    /// earlier source of the plan with the same file name. `fresh` when
    /// `DIR/<sha256>` was written now, not there already.
    HashOnly { name_taken_by: String, fresh: bool },
}

impl Seeded {
    /// Whether anything was written for the source.
    pub fn wrote(&self) -> bool {
        match self {
            Seeded::Copied => true,
            Seeded::AlreadyThere => false,
            Seeded::HashOnly { fresh, .. } => *fresh,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("source mirror {path}: {source}")]
pub struct MirrorError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Copies every fetched source into `dir` as a `--source-mirror`
/// directory: `dir/<sha256>` and `dir/<file name>`.
pub fn seed_mirror(fetched: &[Fetched], dir: &Path) -> Result<Vec<Seeded>, MirrorError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MirrorError { path, source }
    };
    fs::create_dir_all(dir).map_err(err(dir))?;
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut out = Vec::new();
    for f in fetched {
        let by_hash = dir.join(&f.sha256);
        let mut fresh = false;
        if !holds(&by_hash, &f.sha256) {
            copy_into_place(&f.path, &by_hash).map_err(err(&by_hash))?;
            fresh = true;
        }
        let name = f.file_name.as_str();
        if name.is_empty() || name == f.sha256 || name.starts_with('.') {
            out.push(if fresh {
                Seeded::Copied
            } else {
                Seeded::AlreadyThere
            });
            continue;
        }
        if let Some(first) = names.get(name).filter(|u| **u != f.url) {
            out.push(Seeded::HashOnly {
                name_taken_by: first.to_string(),
                fresh,
            });
            continue;
        }
        names.insert(name, &f.url);
        let by_name = dir.join(name);
        if !holds(&by_name, &f.sha256) {
            link_or_copy(&by_hash, &by_name).map_err(err(&by_name))?;
            fresh = true;
        }
        out.push(if fresh {
            Seeded::Copied
        } else {
            Seeded::AlreadyThere
        });
    }
    Ok(out)
}

/// Whether `path` is a file whose sha256 is `sha256`.
fn holds(path: &Path, sha256: &str) -> bool {
    path.is_file() && sources::file_digests(path).is_ok_and(|d| d.sha256 == sha256)
}

/// The directory `to` is put in.
fn parent(to: &Path) -> &Path {
    match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Puts a copy of `from` at `to` in one rename, through a new temporary
/// file beside it (a name of its own, created exclusively: nothing already
/// there is followed or reused), removed when anything fails.
fn copy_into_place(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::NamedTempFile::new_in(parent(to))?;
    io::copy(&mut fs::File::open(from)?, tmp.as_file_mut())?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(to).map_err(|e| e.error)?;
    Ok(())
}

/// Puts `from`'s content at `to` in one rename: a hard link made in a new
/// temporary directory beside it (removed afterwards), or a copy where the
/// file system has no links.
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    let aside = tempfile::TempDir::new_in(parent(to))?;
    let link = aside.path().join("link");
    if fs::hard_link(from, &link).is_ok() {
        return fs::rename(&link, to);
    }
    copy_into_place(from, to)
}
