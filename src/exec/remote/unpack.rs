//! A stage artifact's layer into a fresh pending cache entry, checked as
//! it is written: the layer's bytes against its digest, and the tree the
//! entries make against the digest the entry recorded, computed from what
//! is written (`fsops::TreeHasher`) instead of read back from the disk.
//!
//! Written by hand rather than with the image unpacker (`exec::image`):
//! an image layer lands on top of other layers (whiteouts, replaced
//! paths, links followed with care, so every entry stats its parents); a
//! cache entry's layer lands in an empty directory composer owns, from a
//! writer that puts every directory before its contents, once. That
//! allows one create per entry and no lookups on the disk, which is most
//! of the time an entry of a kernel tree (88 000 files) takes.
//!
//! Invariants:
//! - Only what the layer writer (`oci::layer`) makes is accepted:
//!   directories, regular files, symlinks, hard links to a file written
//!   before; relative paths with no `..`, each once, under a directory
//!   the layer made. Anything else is an error and the caller discards the
//!   entry.
//! - Nothing is written outside `out`: every parent is a directory this
//!   unpacker created (never a symlink), and files are created new.
//! - Files get the layer's mtime (the writer's epoch), so `make` in a
//!   stage built on the tree finds every target as new as its inputs.
//! - The digest covers the tree as it is on the disk: modes are set as
//!   recorded (directories last, deepest first, the root with the mode the
//!   artifact names), hard links hash as the file they share.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, UNIX_EPOCH};

use oci_spec::image::Descriptor;
use sha2::{Digest, Sha256};

use crate::exec::fsops::TreeHasher;
use crate::oci::layout::{Layout, VerifyingReader};

/// What was unpacked: the tree's digest (`fsops::tree_digest`) and the
/// bytes of its regular files (`fsops::tree_size`).
#[derive(Debug)]
pub struct Unpacked {
    pub digest: String,
    pub size: u64,
}

/// A relative path with its parts separated by NUL bytes: ordered as
/// `Path` orders paths (part by part), compared as bytes.
type Key = Vec<u8>;

/// What the reading thread hands the writing one, in layer order. A
/// file's contents follow its `File` as `Chunk`s, then `End`.
enum Item {
    Dir { rel: Key, mode: u32 },
    File { rel: Key, mode: u32, mtime: u64 },
    Chunk(Vec<u8>),
    End { sha256: String, len: u64 },
    Symlink { rel: Key, target: Vec<u8> },
    HardLink { rel: Key, target: Key },
}

/// One path of the tree, as the digest sees it.
enum Node {
    Dir(u32),
    File { mode: u32, sha256: String, len: u64 },
    Symlink(Vec<u8>),
}

/// How many items may wait between the threads, and the size of a chunk:
/// at most 64 MiB of contents in flight.
const QUEUE: usize = 256;
const CHUNK: u64 = 256 << 10;

/// Unpacks the zstd tar `layer` of `layout` into `out`, an empty
/// directory; `root_mode` is the mode `out` gets (else the one it has).
/// One thread reads, decompresses and hashes; this one writes.
pub fn unpack_layer(
    layout: &Layout,
    layer: &Descriptor,
    out: &Path,
    root_mode: Option<u32>,
) -> Result<Unpacked, String> {
    let media = layer.media_type().to_string();
    if !media.ends_with("tar+zstd") {
        return Err(format!("layer of media type {media}: expected a zstd tar"));
    }
    let blob = layout
        .open_blob(layer.digest(), Some(layer.size()))
        .map_err(|e| e.to_string())?;
    let path = layout.blob_path(layer.digest());
    let (tx, rx) = sync_channel(QUEUE);
    let mut tree = Tree {
        out,
        nodes: BTreeMap::new(),
        dirs: Vec::new(),
        open: None,
    };
    std::thread::scope(|scope| {
        let reading = scope.spawn(|| read_layer(blob, &path, tx));
        let written = tree.apply_all(rx);
        // The reader stops at its next item once the receiver is gone.
        let read = reading
            .join()
            .unwrap_or_else(|_| Err("the layer reader panicked".into()));
        read.and(written)
    })?;
    tree.finish(root_mode)
}

/// Reads the layer's entries into `tx`; its digest and size are checked
/// when it has been read to its end. Stops quietly when the writer is gone
/// (it has its own error).
fn read_layer(
    mut blob: VerifyingReader<File>,
    path: &Path,
    tx: SyncSender<Item>,
) -> Result<(), String> {
    let mut buffered = io::BufReader::with_capacity(1 << 20, &mut blob);
    let read = (|| -> Result<bool, String> {
        let decoder = zstd::Decoder::with_buffer(&mut buffered).map_err(|e| e.to_string())?;
        let mut archive = tar::Archive::new(decoder);
        for entry in archive.entries().map_err(|e| e.to_string())? {
            let mut entry = entry.map_err(|e| format!("reading the layer: {e}"))?;
            if !send_entry(&mut entry, &tx)? {
                return Ok(false);
            }
        }
        Ok(true)
    })();
    let drained = match read {
        Ok(true) => io::copy(&mut buffered, &mut io::sink()).map(|_| ()),
        Ok(false) => return Ok(()),
        Err(e) => Err(io::Error::other(e)),
    };
    drop(buffered);
    drained.map_err(|e| blob.explain(e, path).to_string())
}

/// Sends one entry (a file with its contents, hashed here); `false` when
/// the writer is gone.
fn send_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    tx: &SyncSender<Item>,
) -> Result<bool, String> {
    let rel = relative(&entry.path_bytes())?;
    let shown = show(&rel);
    let header = entry.header();
    let mode = header.mode().map_err(|e| format!("`{shown}`: {e}"))? & 0o7777;
    let kind = header.entry_type();
    let item = if kind.is_dir() {
        Item::Dir { rel, mode }
    } else if kind.is_symlink() {
        let target = link_target(entry, &shown)?;
        Item::Symlink { rel, target }
    } else if kind.is_hard_link() {
        let target = relative(&link_target(entry, &shown)?)?;
        Item::HardLink { rel, target }
    } else if kind.is_file() {
        let mtime = header.mtime().map_err(|e| format!("`{shown}`: {e}"))?;
        if tx.send(Item::File { rel, mode, mtime }).is_err() {
            return Ok(false);
        }
        let mut hash = Sha256::new();
        let mut len = 0u64;
        loop {
            let mut chunk = Vec::new();
            (&mut *entry)
                .take(CHUNK)
                .read_to_end(&mut chunk)
                .map_err(|e| format!("`{shown}`: reading the layer: {e}"))?;
            if chunk.is_empty() {
                break;
            }
            hash.update(&chunk);
            len += chunk.len() as u64;
            if tx.send(Item::Chunk(chunk)).is_err() {
                return Ok(false);
            }
        }
        let sha256 = hex::encode(hash.finalize());
        Item::End { sha256, len }
    } else {
        return Err(format!(
            "`{shown}` is a {kind:?} entry: a cache entry holds directories, files and links only"
        ));
    };
    Ok(tx.send(item).is_ok())
}

/// The tree being written.
struct Tree<'a> {
    out: &'a Path,
    nodes: BTreeMap<Key, Node>,
    /// Directories in the order they were made (parents first).
    dirs: Vec<(Key, u32)>,
    /// The file whose contents are arriving.
    open: Option<(File, Key, u32, u64)>,
}

impl Tree<'_> {
    fn apply_all(&mut self, rx: Receiver<Item>) -> Result<(), String> {
        for item in rx {
            self.apply(item)?;
        }
        match &self.open {
            Some((_, rel, _, _)) => Err(format!("`{}`: the layer ends inside it", show(rel))),
            None => Ok(()),
        }
    }

    fn path(&self, rel: &[u8]) -> PathBuf {
        let mut p = self.out.to_path_buf();
        for part in rel.split(|&b| b == 0) {
            p.push(std::ffi::OsStr::from_bytes(part));
        }
        p
    }

    /// Refuses an entry seen before, or not under a directory of the layer.
    fn place(&self, rel: &[u8]) -> Result<PathBuf, String> {
        if rel.is_empty() {
            return Err("the layer has an entry for its root".into());
        }
        if self.nodes.contains_key(rel) {
            return Err(format!("`{}` appears twice in the layer", show(rel)));
        }
        let parent = rel
            .iter()
            .rposition(|&b| b == 0)
            .map_or(&[][..], |i| &rel[..i]);
        if !parent.is_empty() && !matches!(self.nodes.get(parent), Some(Node::Dir(_))) {
            return Err(format!(
                "`{}` is not under a directory of the layer",
                show(rel)
            ));
        }
        Ok(self.path(rel))
    }

    fn apply(&mut self, item: Item) -> Result<(), String> {
        let fail = |rel: &[u8], e: io::Error| format!("`{}`: {e}", show(rel));
        if self.open.is_some() != matches!(item, Item::Chunk(_) | Item::End { .. }) {
            return Err("the layer's entries are out of order".into());
        }
        match item {
            Item::Dir { rel, mode } => {
                let path = self.place(&rel)?;
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| fail(&rel, e))?;
                self.dirs.push((rel.clone(), mode));
                self.nodes.insert(rel, Node::Dir(mode));
            }
            Item::File { rel, mode, mtime } => {
                let path = self.place(&rel)?;
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| fail(&rel, e))?;
                self.open = Some((file, rel, mode, mtime));
            }
            Item::Chunk(bytes) => {
                if let Some((file, rel, _, _)) = &mut self.open {
                    file.write_all(&bytes).map_err(|e| fail(rel, e))?;
                }
            }
            Item::End { sha256, len } => {
                if let Some((file, rel, mode, mtime)) = self.open.take() {
                    // After the writes: writing clears setuid and setgid
                    // bits (without CAP_FSETID), and a default ACL or the
                    // umask may have changed the mode the file was made with.
                    file.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(|e| fail(&rel, e))?;
                    let time = UNIX_EPOCH
                        .checked_add(Duration::from_secs(mtime))
                        .ok_or_else(|| {
                            format!("`{}`: mtime {mtime} is out of range", show(&rel))
                        })?;
                    file.set_modified(time).map_err(|e| fail(&rel, e))?;
                    self.nodes.insert(rel, Node::File { mode, sha256, len });
                }
            }
            Item::Symlink { rel, target } => {
                let path = self.place(&rel)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                    .map_err(|e| fail(&rel, e))?;
                self.nodes.insert(rel, Node::Symlink(target));
            }
            Item::HardLink { rel, target } => {
                let path = self.place(&rel)?;
                let Some(Node::File { mode, sha256, len }) = self.nodes.get(&target) else {
                    return Err(format!(
                        "`{}` links to `{}`, not a file written before it",
                        show(&rel),
                        show(&target)
                    ));
                };
                let node = Node::File {
                    mode: *mode,
                    sha256: sha256.clone(),
                    len: *len,
                };
                fs::hard_link(self.path(&target), &path).map_err(|e| fail(&rel, e))?;
                self.nodes.insert(rel, node);
            }
        }
        Ok(())
    }

    /// Sets the directories' modes (deepest first, so a read-only
    /// directory is made so after its contents) and hashes the tree.
    fn finish(self, root_mode: Option<u32>) -> Result<Unpacked, String> {
        for (rel, mode) in self.dirs.iter().rev() {
            fs::set_permissions(self.path(rel), fs::Permissions::from_mode(*mode))
                .map_err(|e| format!("`{}`: {e}", show(rel)))?;
        }
        let root_mode = match root_mode {
            Some(mode) => {
                fs::set_permissions(self.out, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| format!("{}: {e}", self.out.display()))?;
                mode
            }
            None => fs::metadata(self.out)
                .map_err(|e| format!("{}: {e}", self.out.display()))?
                .permissions()
                .mode(),
        };
        let mut h = TreeHasher::default();
        h.dir(Path::new(""), root_mode);
        let mut size = 0;
        for (rel, node) in &self.nodes {
            let path = as_path(rel);
            match node {
                Node::Dir(mode) => h.dir(&path, *mode),
                Node::File { mode, sha256, len } => {
                    h.file(&path, *mode, sha256);
                    size += len;
                }
                Node::Symlink(target) => h.symlink(&path, target),
            }
        }
        Ok(Unpacked {
            digest: h.finish(),
            size,
        })
    }
}

/// A key as a relative path, byte for byte.
fn as_path(rel: &[u8]) -> PathBuf {
    let bytes: Vec<u8> = rel.iter().map(|&b| if b == 0 { b'/' } else { b }).collect();
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// A key as a path (`/` between its parts), for messages.
fn show(rel: &[u8]) -> String {
    String::from_utf8_lossy(
        &rel.iter()
            .map(|&b| if b == 0 { b'/' } else { b })
            .collect::<Vec<u8>>(),
    )
    .into_owned()
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, shown: &str) -> Result<Vec<u8>, String> {
    match entry.link_name_bytes() {
        Some(t) if !t.is_empty() => Ok(t.into_owned()),
        _ => Err(format!("`{shown}` is a link with no target")),
    }
}

/// A layer path as a key: `.` parts dropped; `..`, absolute paths and NUL
/// bytes refused.
fn relative(raw: &[u8]) -> Result<Key, String> {
    let shown = String::from_utf8_lossy(raw);
    if raw.first() == Some(&b'/') {
        return Err(format!("`{shown}` is an absolute path"));
    }
    if raw.contains(&0) {
        return Err(format!("`{shown}` holds a NUL byte"));
    }
    let mut key = Key::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(format!("`{shown}` leaves the entry's tree")),
            name => {
                if !key.is_empty() {
                    key.push(0);
                }
                key.extend_from_slice(name);
            }
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests;
