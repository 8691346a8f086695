//! Filesystem operations of the build: copying trees the way bldr merges
//! dependencies, normalizing outputs, removing trees, hashing trees.
//!
//! Invariants:
//! - Copies keep file type, permission bits, symlink targets and mtimes (to
//!   the nanosecond, so `make` in a dependant sees the same timestamps), and
//!   ownership when running as root. Hard links inside a tree become
//!   separate files. Device nodes, FIFOs and sockets are refused: no build
//!   output needs them and Talos refuses them in extensions.
//! - Paths from definitions are resolved with [`inside`], which refuses
//!   `..` and so can never address anything outside the given root.
//! - [`tree_digest`] depends only on relative paths, types, modes, symlink
//!   targets and contents: never on mtimes, owners or the tree's location.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
use sha2::{Digest, Sha256};

/// An error of a filesystem operation, with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FsError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub type FsResult<T> = Result<T, FsError>;

pub(crate) fn ctx<T>(path: &Path, r: io::Result<T>) -> FsResult<T> {
    r.map_err(|source| FsError {
        path: path.to_path_buf(),
        source,
    })
}

fn other(path: &Path, msg: String) -> FsError {
    FsError {
        path: path.to_path_buf(),
        source: io::Error::other(msg),
    }
}

/// `root` joined with an absolute or relative in-sandbox `path`; `None`
/// when the path has a `..` component.
pub fn inside(root: &Path, path: &str) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Copies `from` inside `src_root` to `to` inside `dst_root`, as bldr's
/// merge does: a directory's contents are merged into `to` (created as
/// needed), a file lands at `to`, or inside `to` when that is a directory.
pub fn copy_into(src_root: &Path, from: &str, dst_root: &Path, to: &str) -> FsResult<()> {
    let src = inside(src_root, from)
        .ok_or_else(|| other(src_root, format!("`{from}` leaves the filesystem")))?;
    let mut dst = inside(dst_root, to)
        .ok_or_else(|| other(dst_root, format!("`{to}` leaves the filesystem")))?;
    let meta = ctx(&src, fs::symlink_metadata(&src))?;
    if meta.is_dir() {
        ensure_dir(&dst)?;
        return copy_dir_contents(&src, &dst);
    }
    if dst.is_dir()
        && let Some(name) = src.file_name()
    {
        dst.push(name);
    }
    if let Some(parent) = dst.parent() {
        ensure_dir(parent)?;
    }
    copy_entry(&src, &dst, &meta)
}

/// Creates `dir` and its parents (mode 0755).
pub fn ensure_dir(dir: &Path) -> FsResult<()> {
    if let Ok(m) = fs::symlink_metadata(dir)
        && !m.is_dir()
    {
        ctx(dir, fs::remove_file(dir))?;
    }
    ctx(dir, fs::create_dir_all(dir))
}

/// Merges the contents of directory `src` into directory `dst`.
pub fn copy_dir_contents(src: &Path, dst: &Path) -> FsResult<()> {
    let mut entries: Vec<_> = ctx(src, fs::read_dir(src))?
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| FsError {
            path: src.to_path_buf(),
            source: e,
        })?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let s = e.path();
        let d = dst.join(e.file_name());
        let meta = ctx(&s, fs::symlink_metadata(&s))?;
        copy_entry(&s, &d, &meta)?;
    }
    Ok(())
}

fn copy_entry(src: &Path, dst: &Path, meta: &fs::Metadata) -> FsResult<()> {
    let ft = meta.file_type();
    let existing = fs::symlink_metadata(dst).ok();
    if ft.is_dir() {
        match existing {
            Some(m) if m.is_dir() => {}
            Some(_) => {
                ctx(dst, fs::remove_file(dst))?;
                ctx(dst, fs::create_dir(dst))?;
            }
            None => ctx(dst, fs::create_dir(dst))?,
        }
        copy_dir_contents(src, dst)?;
        ctx(
            dst,
            fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777)),
        )?;
    } else {
        if let Some(m) = existing {
            if m.is_dir() {
                remove_tree(dst)?;
            } else {
                ctx(dst, fs::remove_file(dst))?;
            }
        }
        if ft.is_symlink() {
            let target = ctx(src, fs::read_link(src))?;
            ctx(dst, std::os::unix::fs::symlink(&target, dst))?;
        } else if ft.is_file() {
            ctx(dst, fs::copy(src, dst))?;
        } else {
            return Err(other(
                src,
                "special files (devices, FIFOs, sockets) are not supported in build trees"
                    .to_string(),
            ));
        }
    }
    set_owner_and_times(dst, meta)
}

fn set_owner_and_times(dst: &Path, meta: &fs::Metadata) -> FsResult<()> {
    if rustix::process::geteuid().is_root() {
        let uid = rustix::fs::Uid::from_raw(meta.uid());
        let gid = rustix::fs::Gid::from_raw(meta.gid());
        ctx(
            dst,
            rustix::fs::chownat(CWD, dst, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io::Error::from),
        )?;
        if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
            // chown clears set-id bits: restore them.
            ctx(
                dst,
                fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777)),
            )?;
        }
    }
    let ts = |sec: i64, nsec: i64| Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    set_times(
        dst,
        ts(meta.atime(), meta.atime_nsec()),
        ts(meta.mtime(), meta.mtime_nsec()),
    )
}

fn set_times(path: &Path, atime: Timespec, mtime: Timespec) -> FsResult<()> {
    let times = Timestamps {
        last_access: atime,
        last_modification: mtime,
    };
    ctx(
        path,
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io::Error::from),
    )
}

/// Removes a tree, making read-only directories writable first.
pub fn remove_tree(path: &Path) -> FsResult<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
                if entry.file_type().is_dir() {
                    let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
                }
            }
            ctx(path, fs::remove_dir_all(path))
        }
    }
}

/// Makes every entry of `root` owned by 0:0 (when running as root) and,
/// with `epoch`, sets every timestamp to it.
pub fn normalize_tree(root: &Path, epoch: Option<i64>) -> FsResult<()> {
    let as_root = rustix::process::geteuid().is_root();
    for entry in walkdir::WalkDir::new(root).contents_first(true) {
        let entry = entry.map_err(|e| other(root, e.to_string()))?;
        let p = entry.path();
        if as_root {
            let meta = ctx(p, fs::symlink_metadata(p))?;
            let zero_u = rustix::fs::Uid::ROOT;
            let zero_g = rustix::fs::Gid::ROOT;
            ctx(
                p,
                rustix::fs::chownat(
                    CWD,
                    p,
                    Some(zero_u),
                    Some(zero_g),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io::Error::from),
            )?;
            if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
                ctx(
                    p,
                    fs::set_permissions(p, fs::Permissions::from_mode(meta.mode() & 0o7777)),
                )?;
            }
        }
        if let Some(epoch) = epoch {
            let t = Timespec {
                tv_sec: epoch,
                tv_nsec: 0,
            };
            set_times(p, t, t)?;
        }
    }
    Ok(())
}

/// A digest of a tree's relative paths, types, modes, link targets and
/// contents (hex sha256). A missing tree hashes as empty.
pub fn tree_digest(root: &Path) -> FsResult<String> {
    let mut h = TreeHasher::default();
    if fs::symlink_metadata(root).is_err() {
        return Ok(h.finish());
    }
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.map_err(|e| other(root, e.to_string()))?;
        let p = entry.path();
        let rel = p.strip_prefix(root).unwrap_or(p);
        let meta = ctx(p, fs::symlink_metadata(p))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            h.symlink(
                rel,
                ctx(p, fs::read_link(p))?.as_os_str().as_encoded_bytes(),
            );
        } else if ft.is_dir() {
            h.dir(rel, meta.mode());
        } else if ft.is_file() {
            h.file(rel, meta.mode(), &file_sha256(p)?);
        } else {
            h.special(rel);
        }
    }
    Ok(h.finish())
}

/// What [`tree_digest`] hashes, entry by entry: fed in walk order (paths
/// compared component by component, as `Path`'s `Ord` does), the root
/// first with the empty path, it gives the digest of the tree those
/// entries make. The one definition of the digest's format.
#[derive(Default)]
pub struct TreeHasher {
    h: Sha256,
}

impl TreeHasher {
    fn entry(&mut self, rel: &Path, kind: &[u8]) {
        self.h.update(rel.as_os_str().as_encoded_bytes());
        self.h.update([0]);
        self.h.update(kind);
        self.h.update([0]);
    }

    pub fn dir(&mut self, rel: &Path, mode: u32) {
        self.entry(rel, format!("d{:o}", mode & 0o7777).as_bytes());
    }

    /// A regular file whose contents have the sha256 `sha256_hex`.
    pub fn file(&mut self, rel: &Path, mode: u32, sha256_hex: &str) {
        self.entry(rel, format!("f{:o}:{sha256_hex}", mode & 0o7777).as_bytes());
    }

    pub fn symlink(&mut self, rel: &Path, target: &[u8]) {
        self.entry(rel, &[b"l", target].concat());
    }

    /// A device node, FIFO or socket.
    pub fn special(&mut self, rel: &Path) {
        self.entry(rel, b"s");
    }

    pub fn finish(self) -> String {
        hex::encode(self.h.finalize())
    }
}

/// The sha256 of one file's contents (hex).
pub fn file_sha256(path: &Path) -> FsResult<String> {
    use std::io::Read;
    let mut f = ctx(path, fs::File::open(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return ctx(path, Err(e)),
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Size in bytes of the regular files of a tree.
pub fn tree_size(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
