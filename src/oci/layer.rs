//! Deterministic image layers: a directory tree becomes a tar stream,
//! compressed (gzip or zstd) straight into a blob of an OCI layout, with
//! the layer digest (compressed) and the diff ID (uncompressed) computed in
//! the same pass. Nothing is staged on disk besides the blob's temp file.
//!
//! Reproducibility — the same tree gives the same digests on any machine:
//! - entries in byte order of their path, directories before their
//!   contents; paths relative, without a leading `./`;
//! - owner 0:0 and no user or group names, whatever owns the files;
//! - every mtime is the epoch given (`SOURCE_DATE_EPOCH`, else 0); no
//!   atime/ctime; permission bits kept (`mode & 0o7777`);
//! - hard links inside the tree become tar hard links to the first path
//!   seen, so the result does not depend on inode numbers;
//! - gzip at a fixed level with no name or time in its header; zstd at a
//!   fixed level, always with ≥ 1 worker (zstd's output is the same for any
//!   number of workers ≥ 1, so the core count of the machine does not
//!   matter).
//!
//! Extended attributes are not carried (none of composer's outputs need
//! them; Talos' extension loader ignores them).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, MediaType};
use sha2::{Digest as _, Sha256};

use crate::oci::layout::{Layout, LayoutError, sha256_digest};

/// How a layer is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn media_type(self) -> MediaType {
        match self {
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
            Compression::None => MediaType::ImageLayer,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            _ => Err(format!("unknown compression `{s}` (gzip, zstd or none)")),
        }
    }
}

/// The gzip level: the `gzip` tool's default.
const GZIP_LEVEL: u32 = 6;
/// The zstd level: the `zstd` tool's default.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{path}: {message}")]
    Entry { path: PathBuf, message: String },
}

/// A layer written into a layout.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Media type, size and digest of the compressed blob.
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Entries in the tar.
    pub entries: u64,
}

/// One entry to put in a layer: `source` on disk stored as `name`.
struct Entry {
    name: String,
    source: PathBuf,
}

/// Writes the contents of `root` (not `root` itself) as one layer.
pub fn write_dir(
    layout: &Layout,
    root: &Path,
    compression: Compression,
    epoch: u64,
) -> Result<Layer, LayerError> {
    write_entries(
        layout,
        &[(String::new(), root.to_path_buf())],
        &[],
        compression,
        epoch,
    )
}

/// Writes several trees into one layer: each `(prefix, dir)` puts the
/// contents of `dir` under `prefix` (`""` for the root). A prefix's parent
/// directories are added as 0755 directories. Paths in `exclude` (and
/// everything below them) are left out, and so is `layout` itself: an
/// image written into the tree it packs never contains itself or
/// composer's staging area.
pub fn write_entries(
    layout: &Layout,
    trees: &[(String, PathBuf)],
    exclude: &[PathBuf],
    compression: Compression,
    epoch: u64,
) -> Result<Layer, LayerError> {
    let mut excluded: Vec<PathBuf> = exclude
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    excluded.extend(layout.root().canonicalize().ok());
    let entries = collect(trees, &excluded)?;
    let blob = layout.blob_writer()?;
    let blob_path = layout.root().join("blobs/.tmp");
    let io_blob = |source: io::Error| LayerError::Io {
        path: blob_path.clone(),
        source,
    };
    let (blob, diff_id, count) = match compression {
        Compression::Gzip => {
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(blob, flate2::Compression::new(GZIP_LEVEL));
            let (gz, d, n) = write_tar(gz, &entries, epoch, &blob_path)?;
            (gz.finish().map_err(io_blob)?, d, n)
        }
        Compression::Zstd => {
            let mut z = zstd::Encoder::new(blob, ZSTD_LEVEL).map_err(io_blob)?;
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            z.multithread(workers.max(1)).map_err(io_blob)?;
            let (z, d, n) = write_tar(z, &entries, epoch, &blob_path)?;
            (z.finish().map_err(io_blob)?, d, n)
        }
        Compression::None => write_tar(blob, &entries, epoch, &blob_path)?,
    };
    let (digest, size) = blob.finish(None)?;
    Ok(Layer {
        descriptor: Descriptor::new(compression.media_type(), size, digest),
        diff_id,
        entries: count,
    })
}

/// Hashes what goes through it (the diff ID) and remembers a failed
/// write, so an error is blamed on the blob, not on the file being read.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    write_failed: bool,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .inner
            .write(buf)
            .inspect_err(|_| self.write_failed = true)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sorted entries of all trees, with the parents of every prefix.
fn collect(trees: &[(String, PathBuf)], excluded: &[PathBuf]) -> Result<Vec<Entry>, LayerError> {
    let mut out: Vec<Entry> = Vec::new();
    for (prefix, dir) in trees {
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            let mut acc = String::new();
            for part in prefix.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                out.push(Entry {
                    name: acc.clone(),
                    source: PathBuf::new(),
                });
            }
        }
        let meta = fs::symlink_metadata(dir).map_err(|source| LayerError::Io {
            path: dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(LayerError::Entry {
                path: dir.clone(),
                message: "not a directory".into(),
            });
        }
        let canon = dir.canonicalize().map_err(|source| LayerError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut walk = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .follow_links(false)
            .into_iter();
        while let Some(e) = walk.next() {
            let e = e.map_err(|e| LayerError::Entry {
                path: e.path().map_or_else(|| dir.clone(), Path::to_path_buf),
                message: e.to_string(),
            })?;
            if !excluded.is_empty() {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .expect("walkdir yields paths under its root");
                if excluded.iter().any(|x| *x == canon.join(rel)) {
                    if e.file_type().is_dir() {
                        walk.skip_current_dir();
                    }
                    continue;
                }
            }
            let rel = e
                .path()
                .strip_prefix(dir)
                .expect("walkdir yields paths under its root");
            let rel = rel.to_str().ok_or_else(|| LayerError::Entry {
                path: e.path().to_path_buf(),
                message: "file name is not UTF-8".into(),
            })?;
            let name = if prefix.is_empty() {
                rel.to_string()
            } else {
                format!("{prefix}/{rel}")
            };
            out.push(Entry {
                name,
                source: e.path().to_path_buf(),
            });
        }
    }
    // Byte order of the path components: a directory comes right before
    // its contents (sorting whole strings would put `a.b` between `a` and
    // `a/x`).
    out.sort_by(|a, b| a.name.split('/').cmp(b.name.split('/')));
    out.dedup_by(|a, b| a.name == b.name && a.source.as_os_str().is_empty());
    Ok(out)
}

fn header(kind: tar::EntryType, mode: u32, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch);
    h.set_size(0);
    if let Some(g) = h.as_gnu_mut() {
        g.set_atime(0);
        g.set_ctime(0);
    }
    h
}

/// Writes the tar of `entries` into `out` (the blob at `blob`, maybe
/// through a compressor); returns `out`, the diff ID and the entry count.
fn write_tar<W: Write>(
    out: W,
    entries: &[Entry],
    epoch: u64,
    blob: &Path,
) -> Result<(W, Digest, u64), LayerError> {
    let mut tar = tar::Builder::new(Hashing {
        inner: out,
        hasher: Sha256::new(),
        write_failed: false,
    });
    tar.mode(tar::HeaderMode::Deterministic);
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut count = 0u64;
    for e in entries {
        count += 1;
        if let Err(error) = append(&mut tar, e, epoch, &mut links) {
            // A failed write is the blob's fault (disk full), not the entry's.
            return Err(match error {
                LayerError::Io { source, .. } if tar.get_ref().write_failed => LayerError::Io {
                    path: blob.to_path_buf(),
                    source,
                },
                other => other,
            });
        }
    }
    let hashing = tar.into_inner().map_err(|source| LayerError::Io {
        path: blob.to_path_buf(),
        source,
    })?;
    let diff_id = sha256_digest(&hex::encode(hashing.hasher.finalize()));
    Ok((hashing.inner, diff_id, count))
}

/// Appends one entry.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    e: &Entry,
    epoch: u64,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<(), LayerError> {
    {
        let err = |source: io::Error| LayerError::Io {
            path: e.source.clone(),
            source,
        };
        if e.source.as_os_str().is_empty() {
            let mut h = header(tar::EntryType::Directory, 0o755, epoch);
            tar.append_data(&mut h, format!("{}/", e.name), io::empty())
                .map_err(err)?;
            return Ok(());
        }
        let meta = fs::symlink_metadata(&e.source).map_err(err)?;
        let ft = meta.file_type();
        let mode = meta.mode();
        if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, mode, epoch);
            tar.append_data(&mut h, format!("{}/", e.name), io::empty())
                .map_err(err)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&e.source).map_err(err)?;
            let mut h = header(tar::EntryType::Symlink, 0o777, epoch);
            append_symlink(tar, &mut h, &e.name, target.as_os_str().as_encoded_bytes())
                .map_err(err)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    let mut h = header(tar::EntryType::Link, mode, epoch);
                    tar.append_link(&mut h, &e.name, first).map_err(err)?;
                    return Ok(());
                }
                links.insert(key, e.name.clone());
            }
            let mut h = header(tar::EntryType::Regular, mode, epoch);
            h.set_size(meta.len());
            let f = fs::File::open(&e.source).map_err(err)?;
            tar.append_data(&mut h, &e.name, f).map_err(err)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            let mut h = header(kind, mode, epoch);
            let rdev = meta.rdev();
            h.set_device_major(libc::major(rdev)).map_err(err)?;
            h.set_device_minor(libc::minor(rdev)).map_err(err)?;
            tar.append_data(&mut h, &e.name, io::empty()).map_err(err)?;
        } else if ft.is_fifo() {
            let mut h = header(tar::EntryType::Fifo, mode, epoch);
            tar.append_data(&mut h, &e.name, io::empty()).map_err(err)?;
        } else {
            return Err(LayerError::Entry {
                path: e.source.clone(),
                message: "a socket cannot be stored in a layer".into(),
            });
        }
    }
    Ok(())
}

/// Appends a symlink whose target is stored byte for byte: the tar crate's
/// `append_link` cleans the target (`a/./b` becomes `a/b`), which would
/// change what the link points at for a reader comparing trees. A target
/// of 100 bytes or more goes in a GNU long-link entry (`././@LongLink`,
/// type `K`), as GNU tar writes it; written here because the crate only
/// does that for cleaned targets.
fn append_symlink<W: Write>(
    tar: &mut tar::Builder<W>,
    h: &mut tar::Header,
    name: &str,
    target: &[u8],
) -> io::Result<()> {
    const LINKNAME: usize = 100;
    if target.len() < LINKNAME {
        h.set_link_name_literal(target)?;
    } else {
        let mut long = tar::Header::new_gnu();
        let marker = b"././@LongLink";
        if let Some(g) = long.as_gnu_mut() {
            g.name[..marker.len()].copy_from_slice(marker);
        }
        long.set_entry_type(tar::EntryType::GNULongLink);
        long.set_mode(0o644);
        long.set_uid(0);
        long.set_gid(0);
        long.set_mtime(0);
        long.set_size(target.len() as u64 + 1);
        long.set_cksum();
        tar.append(&long, target.chain(&[0u8][..]))?;
        h.set_link_name_literal(&target[..LINKNAME - 1])?;
    }
    tar.append_data(h, name, io::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("usr/lib/modules/6.1/extra")).unwrap();
        fs::write(dir.join("usr/lib/modules/6.1/extra/a.ko"), b"module").unwrap();
        fs::write(dir.join("usr/a.b"), b"x").unwrap();
        fs::hard_link(dir.join("usr/a.b"), dir.join("usr/z")).unwrap();
        std::os::unix::fs::symlink("a.b", dir.join("usr/link")).unwrap();
        fs::set_permissions(dir.join("usr/a.b"), fs::Permissions::from_mode(0o640)).unwrap();
    }

    #[test]
    fn same_tree_gives_same_digests_whatever_the_mtimes() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::create(&t.path().join("l")).unwrap();
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            tree(&t.path().join(format!("a{c:?}")));
            let a = write_dir(&l, &t.path().join(format!("a{c:?}")), c, 1).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            tree(&t.path().join(format!("b{c:?}")));
            let b = write_dir(&l, &t.path().join(format!("b{c:?}")), c, 1).unwrap();
            assert_eq!(a.descriptor.digest(), b.descriptor.digest(), "{c:?}");
            assert_eq!(a.diff_id, b.diff_id);
        }
    }

    #[test]
    fn symlink_targets_are_stored_byte_for_byte() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("r");
        fs::create_dir_all(&r).unwrap();
        let long = format!("../.{}/x", "/./..".repeat(30));
        let targets = ["../.././a/b", "a//b/.", long.as_str()];
        for (i, target) in targets.iter().enumerate() {
            std::os::unix::fs::symlink(target, r.join(format!("l{i}"))).unwrap();
        }
        let l = Layout::create(&t.path().join("l")).unwrap();
        let layer = write_dir(&l, &r, Compression::None, 0).unwrap();
        let f = fs::File::open(l.blob_path(layer.descriptor.digest())).unwrap();
        let mut ar = tar::Archive::new(f);
        let got: Vec<Vec<u8>> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().link_name_bytes().unwrap().into_owned())
            .collect();
        let want: Vec<Vec<u8>> = targets.iter().map(|t| t.as_bytes().to_vec()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn directories_precede_their_contents_and_links_are_kept() {
        let t = tempfile::tempdir().unwrap();
        tree(&t.path().join("r"));
        let l = Layout::create(&t.path().join("l")).unwrap();
        let layer = write_dir(&l, &t.path().join("r"), Compression::None, 7).unwrap();
        let f = fs::File::open(l.blob_path(layer.descriptor.digest())).unwrap();
        let mut ar = tar::Archive::new(f);
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 7)
            );
            names.push((e.path().unwrap().display().to_string(), h.entry_type()));
        }
        let only: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            only,
            [
                "usr/",
                "usr/a.b",
                "usr/lib/",
                "usr/lib/modules/",
                "usr/lib/modules/6.1/",
                "usr/lib/modules/6.1/extra/",
                "usr/lib/modules/6.1/extra/a.ko",
                "usr/link",
                "usr/z"
            ]
        );
        assert!(names[7].1.is_symlink());
        assert!(names[8].1.is_hard_link());
    }
}
