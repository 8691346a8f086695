//! The `/pkg` directory of a stage: the package directory's files, with its
//! `*.tmpl` files replaced by their rendered output, as bldr provides it.
//!
//! composer difference, documented for users: a symlink in a package
//! directory whose target lies inside the project (the parent of the root
//! holding the package) is followed, so a package can build sources kept
//! elsewhere in the same repository (the demo's `hello-module/src` links to
//! `fixtures/hello-module`). Other symlinks are copied as symlinks.
//!
//! Invariants: the listing is sorted and holds relative paths only, so the
//! fingerprint of `/pkg` never depends on where the checkout lives; `_out/`
//! and `.git/` are never part of it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::fsops::{self, FsError, FsResult, ctx};

/// One entry of `/pkg`.
#[derive(Clone, Debug)]
pub enum Content {
    Dir,
    File { src: PathBuf, mode: u32 },
    Symlink(PathBuf),
    Rendered(String),
}

/// The entries of `/pkg`, sorted by relative path.
#[derive(Clone, Debug, Default)]
pub struct PkgDir {
    pub entries: Vec<(PathBuf, Content)>,
}

/// Follows symlinks at most this deep (guards against loops).
const MAX_DEPTH: usize = 32;

impl PkgDir {
    /// Lists `dir`; `project` bounds which symlinks are followed;
    /// `templates` are the rendered `*.tmpl` files (relative, no `.tmpl`).
    pub fn collect(dir: &Path, project: &Path, templates: &[(PathBuf, String)]) -> FsResult<Self> {
        let mut entries = Vec::new();
        let project = fs::canonicalize(project).unwrap_or_else(|_| project.to_path_buf());
        walk(dir, Path::new(""), &project, &mut entries, 0)?;
        for (rel, text) in templates {
            entries.retain(|(p, _)| p != rel);
            entries.push((rel.clone(), Content::Rendered(text.clone())));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(PkgDir { entries })
    }

    /// `(name, value)` fingerprint parts, one per file.
    pub fn parts(&self) -> FsResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (rel, c) in &self.entries {
            let name = format!("file /pkg/{}", rel.display());
            let value = match c {
                Content::Dir => continue,
                Content::File { src, mode } => {
                    format!("{:o}:{}", mode & 0o111, fsops::file_sha256(src)?)
                }
                Content::Symlink(t) => format!("link:{}", t.display()),
                Content::Rendered(text) => {
                    use sha2::{Digest, Sha256};
                    format!("rendered:{}", hex::encode(Sha256::digest(text.as_bytes())))
                }
            };
            out.push((name, value));
        }
        Ok(out)
    }

    /// Writes the entries under `dest`.
    pub fn materialize(&self, dest: &Path) -> FsResult<()> {
        ctx(dest, fs::create_dir_all(dest))?;
        for (rel, c) in &self.entries {
            let p = dest.join(rel);
            if let Some(parent) = p.parent() {
                ctx(parent, fs::create_dir_all(parent))?;
            }
            match c {
                Content::Dir => ctx(&p, fs::create_dir_all(&p))?,
                Content::File { src, mode } => {
                    ctx(&p, fs::copy(src, &p))?;
                    ctx(
                        &p,
                        fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777)),
                    )?;
                }
                Content::Symlink(t) => ctx(&p, std::os::unix::fs::symlink(t, &p))?,
                Content::Rendered(text) => ctx(&p, fs::write(&p, text))?,
            }
        }
        Ok(())
    }
}

fn walk(
    dir: &Path,
    rel: &Path,
    project: &Path,
    out: &mut Vec<(PathBuf, Content)>,
    depth: usize,
) -> FsResult<()> {
    if depth > MAX_DEPTH {
        return Err(FsError {
            path: dir.to_path_buf(),
            source: std::io::Error::other("symlinks nested too deep (a loop?)"),
        });
    }
    let mut names: Vec<_> = ctx(dir, fs::read_dir(dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        if name == ".git" || (depth == 0 && rel.as_os_str().is_empty() && name == "_out") {
            continue;
        }
        let path = dir.join(&name);
        let r = rel.join(&name);
        if r.extension().is_some_and(|e| e == "tmpl") {
            continue;
        }
        let meta = ctx(&path, fs::symlink_metadata(&path))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = ctx(&path, fs::read_link(&path))?;
            match fs::canonicalize(&path) {
                Ok(real) if real.starts_with(project) => {
                    let m = ctx(&real, fs::metadata(&real))?;
                    if m.is_dir() {
                        out.push((r.clone(), Content::Dir));
                        walk(&real, &r, project, out, depth + 1)?;
                    } else {
                        out.push((
                            r,
                            Content::File {
                                src: real,
                                mode: m.permissions().mode(),
                            },
                        ));
                    }
                }
                _ => out.push((r, Content::Symlink(target))),
            }
        } else if ft.is_dir() {
            out.push((r.clone(), Content::Dir));
            walk(&path, &r, project, out, depth)?;
        } else if ft.is_file() {
            out.push((
                r,
                Content::File {
                    src: path,
                    mode: meta.permissions().mode(),
                },
            ));
        }
    }
    Ok(())
}
