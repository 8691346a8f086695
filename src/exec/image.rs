//! Image dependencies read from a local OCI image layout: the reference is
//! resolved to a manifest for the build's platform, and its layers are
//! unpacked in order into a cached root filesystem, whiteouts applied.
//!
//! References: `oci:DIR[:TAG]` (the syntax of skopeo's `oci:` transport;
//! DIR relative to the root holding the Pkgfile). Registry references
//! (`ghcr.io/...`) are refused with a hint to copy the image into a layout
//! first (`skopeo copy docker://REF oci:DIR:TAG`).
//!
//! Invariants:
//! - Every blob is checked against its digest while it is read; a
//!   mismatch stops the unpack.
//! - Unpacked trees are cached as `images/<manifest hex>/rootfs`, written
//!   in `tmp/` and renamed whole, like stage entries.
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

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image `{0}`: pulling from a registry is not supported by this version; copy it into an OCI layout first \
         (`skopeo copy docker://{0} oci:images/NAME:TAG`) and depend on `oci:images/NAME:TAG`"
    )]
    Registry(String),
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

/// Resolves `reference` for `platform` (`linux/amd64`), relative to `base`.
pub fn resolve(reference: &str, base: &Path, platform: &str) -> Result<Resolved, ImageError> {
    let Some(rest) = reference.strip_prefix("oci:") else {
        return Err(ImageError::Registry(reference.to_string()));
    };
    let (dir, tag) = match rest.rsplit_once(':') {
        Some((d, t)) if !t.contains('/') => (d, Some(t)),
        _ => (rest, None),
    };
    let layout = base.join(dir);
    let err = |message: String| ImageError::Layout {
        reference: reference.to_string(),
        message,
    };
    let index = ImageIndex::from_file(layout.join("index.json"))
        .map_err(|e| err(format!("{}/index.json: {e}", layout.display())))?;
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| match tag {
            None => true,
            Some(t) => d
                .annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .is_some_and(|n| n == t),
        })
        .collect();
    let desc = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(err(format!("no manifest tagged `{}`", tag.unwrap_or("")))),
        _ => return Err(err("several manifests match; name one with :TAG".into())),
    };
    let desc = pick_platform(&layout, desc, platform, &err)?;
    let manifest_bytes = read_blob(&layout, &desc, reference)?;
    let manifest = ImageManifest::from_reader(&manifest_bytes[..])
        .map_err(|e| err(format!("manifest {}: {e}", desc.digest())))?;
    Ok(Resolved {
        reference: reference.to_string(),
        layout,
        digest: desc.digest().to_string(),
        layers: manifest.layers().clone(),
    })
}

/// Follows an image index down to the manifest for `platform`.
fn pick_platform(
    layout: &Path,
    desc: Descriptor,
    platform: &str,
    err: &dyn Fn(String) -> ImageError,
) -> Result<Descriptor, ImageError> {
    if desc.media_type() != &MediaType::ImageIndex {
        return Ok(desc);
    }
    let bytes = read_blob(layout, &desc, "index")?;
    let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| err(e.to_string()))?;
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

/// Reads a small blob (index, manifest) whole, checking its digest.
fn read_blob(layout: &Path, d: &Descriptor, reference: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(layout, d);
    let bytes = fs::read(&path).map_err(|e| ImageError::Blob {
        reference: reference.to_string(),
        digest: d.digest().to_string(),
        message: e.to_string(),
    })?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if actual != d.digest().to_string() {
        return Err(ImageError::Blob {
            reference: reference.to_string(),
            digest: d.digest().to_string(),
            message: format!("content has digest {actual}"),
        });
    }
    Ok(bytes)
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
