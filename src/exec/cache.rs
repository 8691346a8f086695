//! The on-disk cache: stage outputs by key, downloads, `cachePaths`, and
//! the last fingerprint of each stage (for miss reasons).
//!
//! Layout under the cache root:
//! ```text
//! lock                      flock: one build at a time per cache
//! stages/<key>/meta.json    an entry exists iff its meta.json does
//! stages/<key>/out/         the stage's finalized filesystem
//! downloads/sha256/<hex>    verified sources (see sources.rs)
//! paths/<stage>/<digest>/   persistent cachePaths mounts
//! images/<hex>/rootfs/      unpacked image dependencies
//! last/<platform>/<stage>.json   fingerprint of the last build of a stage
//! tmp/, work/               in-progress entries and stage roots
//! ```
//!
//! Invariants:
//! - An entry is written in `tmp/` and renamed into `stages/` whole, with
//!   `meta.json` already inside: a build killed at any point leaves either
//!   no entry or a complete one. `tmp/` and `work/` are emptied when a
//!   build opens the cache, which repairs what a killed build left.
//! - `meta.json` records the digest of `out/`; `verify` recomputes it.
//! - Entries of one signing session carry that session's id; `build.rs`
//!   reuses a session's entries together or not at all.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fsops::{self, FsError};
use super::key::Fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("cache entry {path} has an unreadable meta.json: {reason}")]
    Meta { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What is recorded with a stage's output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub stage: String,
    pub platform: String,
    pub key: String,
    pub fingerprint: Fingerprint,
    /// `fsops::tree_digest` of `out/`.
    pub output_digest: String,
    pub size: u64,
    /// Unix seconds.
    pub created: u64,
    pub duration_ms: u64,
    /// Id of the signing session the stage took part in.
    pub session: Option<String>,
    /// That session's certificate (PEM; public), so a build that reuses
    /// the session can still validate its modules against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_cert: Option<String>,
}

/// An entry found in the cache.
#[derive(Clone, Debug)]
pub struct Entry {
    pub meta: Meta,
    pub dir: PathBuf,
}

impl Entry {
    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// An entry being written.
pub struct Pending {
    pub dir: PathBuf,
}

impl Pending {
    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// An open cache, holding its lock.
pub struct Cache {
    root: PathBuf,
    _lock: fs::File,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cache {
    /// Opens (creating) the cache for a build: takes the exclusive lock,
    /// calling `waiting` if another process holds it, and clears what a
    /// killed build may have left in `tmp/` and `work/`.
    pub fn open(root: &Path, waiting: &mut dyn FnMut()) -> Result<Cache, CacheError> {
        let cache = Self::lock(root, true, waiting)?;
        for d in ["tmp", "work"] {
            let p = root.join(d);
            fsops::remove_tree(&p)?;
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        for d in ["stages", "paths", "last", "downloads", "images"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(cache)
    }

    /// Opens the cache for reading (ls, verify): a shared lock.
    pub fn open_shared(root: &Path, waiting: &mut dyn FnMut()) -> Result<Cache, CacheError> {
        Self::lock(root, false, waiting)
    }

    fn lock(root: &Path, exclusive: bool, waiting: &mut dyn FnMut()) -> Result<Cache, CacheError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        let path = root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let (try_op, op) = if exclusive {
            (
                FlockOperation::NonBlockingLockExclusive,
                FlockOperation::LockExclusive,
            )
        } else {
            (
                FlockOperation::NonBlockingLockShared,
                FlockOperation::LockShared,
            )
        };
        if rustix::fs::flock(&file, try_op).is_err() {
            waiting();
            rustix::fs::flock(&file, op).map_err(|e| io_err(&path)(e.into()))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
            _lock: file,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// A fresh directory for a stage's root and working files.
    pub fn work_dir(&self, stage: &str) -> Result<PathBuf, CacheError> {
        let p = self.root.join("work").join(format!("{stage}-{}", unique()));
        fs::create_dir_all(&p).map_err(io_err(&p))?;
        Ok(p)
    }

    /// The persistent directory behind `path` of `stage`'s cachePaths.
    pub fn cache_path(
        &self,
        platform: &str,
        stage: &str,
        path: &str,
    ) -> Result<PathBuf, CacheError> {
        let digest = hex::encode(Sha256::digest(format!("{platform}\0{path}").as_bytes()));
        let p = self.root.join("paths").join(stage).join(&digest[..16]);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
        Ok(p)
    }

    /// The unpacked root filesystem of an image, unpacking it with
    /// `unpack(dir)` into `tmp/` and renaming it into place when missing.
    pub fn image_rootfs<E>(
        &self,
        digest: &str,
        unpack: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Result<PathBuf, E>, CacheError> {
        let hex = digest.rsplit(':').next().unwrap_or(digest);
        let dir = self.root.join("images").join(hex);
        let rootfs = dir.join("rootfs");
        if rootfs.is_dir() {
            return Ok(Ok(rootfs));
        }
        let tmp = self.root.join("tmp").join(format!("image-{}", unique()));
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        if let Err(e) = unpack(&tmp.join("rootfs")) {
            fsops::remove_tree(&tmp)?;
            return Ok(Err(e));
        }
        fsops::remove_tree(&dir)?;
        fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        Ok(Ok(rootfs))
    }

    fn stage_dir(&self, key: &str) -> PathBuf {
        self.root.join("stages").join(key)
    }

    /// The complete entry for `key`, if there is one.
    pub fn lookup(&self, key: &str) -> Option<Entry> {
        if !is_key(key) {
            return None;
        }
        let dir = self.stage_dir(key);
        let meta = read_meta(&dir).ok()?;
        (meta.key == key).then_some(Entry { meta, dir })
    }

    /// Starts a new entry in `tmp/`.
    pub fn begin(&self) -> Result<Pending, CacheError> {
        let dir = self.root.join("tmp").join(unique());
        let out = dir.join("out");
        fs::create_dir_all(&out).map_err(io_err(&out))?;
        Ok(Pending { dir })
    }

    /// Seals a pending entry: records its digest and size and renames it
    /// into place, replacing an older entry of the same key (another
    /// session's).
    pub fn commit(&self, pending: Pending, mut meta: Meta) -> Result<Entry, CacheError> {
        meta.output_digest = fsops::tree_digest(&pending.out())?;
        meta.size = fsops::tree_size(&pending.out());
        self.seal(pending, meta)
    }

    /// Seals a pending entry made elsewhere (the shared cache) whose tree
    /// was checked against `meta` (its digest and size) while it was
    /// written; its key must be a stage key (64 hex digits, never a path).
    pub fn commit_checked(&self, pending: Pending, meta: Meta) -> Result<Entry, CacheError> {
        if !is_key(&meta.key) {
            return Err(CacheError::Meta {
                path: pending.dir.join("meta.json"),
                reason: format!("`{}` is not a stage key", meta.key),
            });
        }
        self.seal(pending, meta)
    }

    /// Removes a pending entry.
    pub fn discard(&self, pending: Pending) -> Result<(), CacheError> {
        fsops::remove_tree(&pending.dir)?;
        Ok(())
    }

    fn seal(&self, pending: Pending, meta: Meta) -> Result<Entry, CacheError> {
        let meta_path = pending.dir.join("meta.json");
        let text = serde_json::to_vec_pretty(&meta).map_err(|e| CacheError::Meta {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        fs::write(&meta_path, text).map_err(io_err(&meta_path))?;
        let dest = self.stage_dir(&meta.key);
        if dest.exists() {
            let trash = self.root.join("tmp").join(format!("old-{}", unique()));
            fs::rename(&dest, &trash).map_err(io_err(&dest))?;
            fsops::remove_tree(&trash)?;
        }
        fs::rename(&pending.dir, &dest).map_err(io_err(&dest))?;
        Ok(Entry { meta, dir: dest })
    }

    /// The fingerprint of the last build of `stage` for `platform`.
    pub fn last(&self, platform: &str, stage: &str) -> Option<Fingerprint> {
        let p = self.last_path(platform, stage);
        serde_json::from_slice(&fs::read(p).ok()?).ok()
    }

    pub fn set_last(
        &self,
        platform: &str,
        stage: &str,
        fp: &Fingerprint,
    ) -> Result<(), CacheError> {
        let p = self.last_path(platform, stage);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let tmp = p.with_extension(format!("tmp{}", unique()));
        let text = serde_json::to_vec(fp).map_err(|e| CacheError::Meta {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_err(&p))
    }

    fn last_path(&self, platform: &str, stage: &str) -> PathBuf {
        self.root
            .join("last")
            .join(platform.replace('/', "-"))
            .join(format!("{stage}.json"))
    }

    /// Every complete entry, oldest first; unreadable ones as errors.
    pub fn entries(&self) -> Vec<Result<Entry, CacheError>> {
        let Ok(rd) = fs::read_dir(self.root.join("stages")) else {
            return Vec::new();
        };
        let mut out: Vec<Result<Entry, CacheError>> = rd
            .flatten()
            .map(|e| {
                let dir = e.path();
                read_meta(&dir).map(|meta| Entry { meta, dir })
            })
            .collect();
        out.sort_by_key(|e| e.as_ref().map(|e| e.meta.created).unwrap_or(0));
        out
    }

    /// Removes an entry directory (complete or not).
    pub fn remove(&self, dir: &Path) -> Result<(), CacheError> {
        let trash = self.root.join("tmp").join(format!("rm-{}", unique()));
        fs::rename(dir, &trash).map_err(io_err(dir))?;
        fsops::remove_tree(&trash)?;
        Ok(())
    }

    /// Removes everything but the lock.
    pub fn clear(&self) -> Result<(), CacheError> {
        for d in [
            "stages",
            "paths",
            "last",
            "downloads",
            "images",
            "tmp",
            "work",
        ] {
            fsops::remove_tree(&self.root.join(d))?;
        }
        Ok(())
    }
}

/// A stage key: 64 lowercase hex digits (`key::Fingerprint::key`). Keys
/// name directories, so anything else (a path, `..`) is refused.
pub fn is_key(key: &str) -> bool {
    key.len() == 64
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn read_meta(dir: &Path) -> Result<Meta, CacheError> {
    let p = dir.join("meta.json");
    let bytes = fs::read(&p).map_err(io_err(&p))?;
    serde_json::from_slice(&bytes).map_err(|e| CacheError::Meta {
        path: p,
        reason: e.to_string(),
    })
}

/// A name unique within this machine and process.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
