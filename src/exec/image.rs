//! Image dependencies (`image:` in pkg.yaml): the reference is resolved to
//! a manifest for the build's platform, and its layers are unpacked in
//! order into a cached root filesystem, whiteouts applied.
//!
//! References, relative paths taken from the root holding the Pkgfile:
//! - `oci:DIR[:TAG]`: a local OCI image layout;
//! - `oci-archive:FILE[:TAG]`, `docker-archive:FILE`: unpacked once into
//!   the cache (`images/archives/<sha256 of the file>/`); a docker-archive
//!   must carry an `index.json` (docker ≥ 25, composer, `skopeo copy`);
//! - a registry reference (`ghcr.io/org/img:tag`, `HOST:PORT/img@sha256:…`):
//!   pulled into the cache's layout `images/pulled/` (blobs verified, those
//!   already there skipped). With `--offline` the copy pulled before is
//!   used, or the build stops naming the reference.
//!
//! Invariants:
//! - Every blob is checked against its digest while it is read; a
//!   mismatch stops the unpack.
//! - Unpacked trees are cached as `images/<manifest hex>/rootfs`, written
//!   in `tmp/` and renamed whole, like stage entries; the manifest digest
//!   is what a stage's cache key records, so a moved tag is a miss.
//! - Layer entries cannot escape the root: absolute paths are made
//!   relative, `..` is refused, links are created as symlinks/hardlinks
//!   inside the tree only.
//! - Whiteouts per the OCI spec: `.wh.NAME` removes NAME from the layers
//!   below; `.wh..wh..opq` empties its directory of what the layers below
//!   put there.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest, Sha256};

use super::fsops;
use crate::oci::layout::Layout;
use crate::oci::reference::{ImageRef, RegistryRef};
use crate::oci::registry::{self, RegistryOptions};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image `{reference}`: {message}")]
    Layout { reference: String, message: String },
    #[error("image `{reference}`: blob {digest}: {message}")]
    Blob {
        reference: String,
        digest: String,
        message: String,
    },
}

/// A reference resolved to one manifest.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub reference: String,
    pub layout: PathBuf,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    pub layers: Vec<Descriptor>,
}

/// Where and how image dependencies are fetched.
pub struct Fetch<'a> {
    /// The cache's `images/` directory.
    pub store: &'a Path,
    pub offline: bool,
    /// Plain HTTP allowed to registries (`--insecure`).
    pub insecure: bool,
}

/// Resolves `reference` for `platform` (`linux/amd64`), relative to `base`.
pub fn resolve(
    reference: &str,
    base: &Path,
    platform: &str,
    fetch: &Fetch<'_>,
) -> Result<Resolved, ImageError> {
    let err = |message: String| ImageError::Layout {
        reference: reference.to_string(),
        message,
    };
    let parsed: ImageRef = reference
        .parse()
        .map_err(|e: crate::oci::ReferenceError| err(e.message))?;
    let (layout, desc) = match parsed {
        ImageRef::Layout { dir, tag } => {
            let l = Layout::open(&base.join(dir)).map_err(|e| err(e.to_string()))?;
            let d = l.resolve(tag.as_deref()).map_err(|e| err(e.to_string()))?;
            (l, d)
        }
        ImageRef::OciArchive { path, tag } => {
            let l = extract_archive(&base.join(path), fetch.store).map_err(err)?;
            let d = l.resolve(tag.as_deref()).map_err(|e| err(e.to_string()))?;
            (l, d)
        }
        ImageRef::DockerArchive { path, .. } => {
            let l = extract_archive(&base.join(path), fetch.store).map_err(err)?;
            let d = l.resolve(None).map_err(|e| err(e.to_string()))?;
            (l, d)
        }
        ImageRef::Registry(r) => pull(&r, platform, fetch).map_err(err)?,
    };
    let desc = pick_platform(&layout, desc, platform, &err)?;
    let manifest: ImageManifest = layout
        .read_json(desc.digest())
        .map_err(|e| err(format!("manifest: {e}")))?;
    Ok(Resolved {
        reference: reference.to_string(),
        layout: layout.root().to_path_buf(),
        digest: desc.digest().to_string(),
        layers: manifest.layers().clone(),
    })
}

/// Pulls a registry image into the store's layout (or, offline, finds the
/// copy pulled before).
fn pull(
    r: &RegistryRef,
    platform: &str,
    fetch: &Fetch<'_>,
) -> Result<(Layout, Descriptor), String> {
    let layout = Layout::create(&fetch.store.join("pulled")).map_err(|e| e.to_string())?;
    // One tag per reference and platform in the store's index.
    let tag: String = format!("{r}@{platform}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if fetch.offline {
        return layout
            .resolve(Some(&tag))
            .map(|d| (layout.clone(), d))
            .map_err(|_| "not pulled before, and --offline forbids the registry".to_string());
    }
    let opts = RegistryOptions {
        insecure: fetch.insecure,
        ..RegistryOptions::default()
    };
    let d = registry::pull(r, Some(platform), &layout, &tag, &opts, &|_| {})
        .map_err(|e| e.to_string())?;
    Ok((layout, d))
}

/// Unpacks an archive holding an OCI layout into the store, once per
/// archive content.
fn extract_archive(path: &Path, store: &Path) -> Result<Layout, String> {
    let hex = fsops::file_sha256(path).map_err(|e| e.to_string())?;
    let dir = store.join("archives").join(&hex);
    if let Ok(l) = Layout::open(&dir) {
        return Ok(l);
    }
    let tmp = store.join("archives").join(format!(".{hex}.tmp"));
    fsops::remove_tree(&tmp).map_err(|e| e.to_string())?;
    fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ar = tar::Archive::new(io::BufReader::new(file));
    for entry in ar
        .entries()
        .map_err(|e| format!("{}: {e}", path.display()))?
    {
        let mut entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
        let name = entry.path().map_err(|e| e.to_string())?.into_owned();
        let Some(rel) = clean(&name) else {
            return Err(format!(
                "{}: entry `{}` leaves the archive",
                path.display(),
                name.display()
            ));
        };
        let kind = entry.header().entry_type();
        let dest = tmp.join(&rel);
        if kind.is_dir() {
            fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
        } else if kind.is_file() {
            if let Some(p) = dest.parent() {
                fs::create_dir_all(p).map_err(|e| e.to_string())?;
            }
            let mut out = fs::File::create(&dest).map_err(|e| e.to_string())?;
            io::copy(&mut entry, &mut out).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        // Links and special files have no place in an image archive.
    }
    if !tmp.join("index.json").is_file() {
        fsops::remove_tree(&tmp).map_err(|e| e.to_string())?;
        return Err(format!(
            "{}: no index.json (an older `docker save`?): convert it with              `skopeo copy docker-archive:{} oci:DIR:TAG` and depend on oci:DIR:TAG",
            path.display(),
            path.display()
        ));
    }
    if !tmp.join("oci-layout").is_file() {
        fs::write(tmp.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(|e| e.to_string())?;
    }
    fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Layout::open(&dir).map_err(|e| e.to_string())
}

/// Follows an image index down to the manifest for `platform`.
fn pick_platform(
    layout: &Layout,
    desc: Descriptor,
    platform: &str,
    err: &dyn Fn(String) -> ImageError,
) -> Result<Descriptor, ImageError> {
    if desc.media_type() != &MediaType::ImageIndex
        && !desc.media_type().to_string().contains("manifest.list")
    {
        return Ok(desc);
    }
    let index: ImageIndex = layout
        .read_json(desc.digest())
        .map_err(|e| err(e.to_string()))?;
    let (os, arch) = platform.split_once('/').unwrap_or(("linux", platform));
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
        })
        .cloned()
        .ok_or_else(|| err(format!("no manifest for {platform} in the image index")))
}

fn blob_path(layout: &Path, d: &Descriptor) -> PathBuf {
    let digest = d.digest().to_string();
    let (algo, hex) = digest.split_once(':').unwrap_or(("sha256", &digest));
    layout.join("blobs").join(algo).join(hex)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks the image's layers into `dest` (which must not exist).
pub fn unpack(img: &Resolved, dest: &Path) -> Result<(), ImageError> {
    let blob_err = |d: &Descriptor, message: String| ImageError::Blob {
        reference: img.reference.clone(),
        digest: d.digest().to_string(),
        message,
    };
    fs::create_dir_all(dest).map_err(|e| ImageError::Layout {
        reference: img.reference.clone(),
        message: format!("{}: {e}", dest.display()),
    })?;
    for layer in &img.layers {
        let path = blob_path(&img.layout, layer);
        let file = fs::File::open(&path).map_err(|e| blob_err(layer, e.to_string()))?;
        let mut hashing = Hashing {
            inner: io::BufReader::new(file),
            hash: Sha256::new(),
        };
        let media = layer.media_type().to_string();
        {
            let reader: Box<dyn Read + '_> = if media.ends_with("gzip") {
                Box::new(flate2::read::GzDecoder::new(&mut hashing))
            } else if media.ends_with("zstd") {
                Box::new(
                    zstd::Decoder::new(&mut hashing).map_err(|e| blob_err(layer, e.to_string()))?,
                )
            } else if media.ends_with(".tar") || media.ends_with("tar") {
                Box::new(&mut hashing)
            } else {
                return Err(blob_err(
                    layer,
                    format!("unsupported layer media type {media}"),
                ));
            };
            apply_layer(reader, dest).map_err(|e| blob_err(layer, e))?;
        }
        // Drain what the decompressor did not need, then check the digest.
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| blob_err(layer, e.to_string()))?;
        let actual = format!("sha256:{}", hex::encode(hashing.hash.finalize()));
        if actual != layer.digest().to_string() {
            return Err(blob_err(layer, format!("content has digest {actual}")));
        }
    }
    Ok(())
}

/// Applies one layer's tar stream on top of `dest`.
fn apply_layer(reader: Box<dyn Read + '_>, dest: &Path) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut created: HashSet<PathBuf> = HashSet::new();
    let entries = archive.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let raw = entry.path().map_err(|e| e.to_string())?.into_owned();
        let rel =
            clean(&raw).ok_or_else(|| format!("entry `{}` leaves the root", raw.display()))?;
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == ".wh..wh..opq" {
            let dir = dest.join(&parent);
            if let Ok(rd) = fs::read_dir(&dir) {
                for child in rd.flatten() {
                    let child_rel = parent.join(child.file_name());
                    if !created.contains(&child_rel) {
                        remove_any(&child.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_any(&dest.join(&parent).join(hidden))?;
            continue;
        }
        through_symlink(dest, &parent)?;
        let target = dest.join(&rel);
        if let Ok(m) = fs::symlink_metadata(&target)
            && !(m.is_dir() && entry.header().entry_type().is_dir())
        {
            remove_any(&target)?;
        }
        if let Some(p) = target.parent() {
            fs::create_dir_all(p).map_err(|e| e.to_string())?;
        }
        if entry.header().entry_type().is_hard_link()
            && let Some(link) = entry.link_name().map_err(|e| e.to_string())?
        {
            let src = clean(&link)
                .ok_or_else(|| format!("hard link `{}` leaves the root", link.display()))?;
            fs::hard_link(dest.join(src), &target).map_err(|e| e.to_string())?;
        } else {
            entry
                .unpack(&target)
                .map_err(|e| format!("{}: {e}", rel.display()))?;
        }
        created.insert(rel);
    }
    Ok(())
}

/// Refuses an entry whose parent directory is reached through a symlink
/// (`a -> /etc` then `a/passwd` would write outside the tree).
fn through_symlink(dest: &Path, parent: &Path) -> Result<(), String> {
    let mut p = dest.to_path_buf();
    for c in parent.components() {
        p.push(c);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "entry under `{}` goes through a symlink",
                parent.display()
            ));
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<(), String> {
    match fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => fsops::remove_tree(p).map_err(|e| e.to_string()),
        Ok(_) => fs::remove_file(p).map_err(|e| e.to_string()),
    }
}

/// A tar path made relative, with `.` dropped; `None` if it has `..`.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}
