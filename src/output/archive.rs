//! Writing an image held in a staging layout to its destination: an OCI
//! layout directory (`oci:DIR:TAG`), an `oci-archive` tarball, or a
//! `docker-archive` tarball that both `docker load` and `podman load`
//! accept.
//!
//! The docker-archive is written in the layout Docker itself has used since
//! version 25: an OCI layout (`oci-layout`, `index.json`, `blobs/sha256/`)
//! plus the legacy `manifest.json` whose `Config` and `Layers` point at
//! those blobs. Older readers use `manifest.json`, newer ones `index.json`;
//! layers stay compressed (both loaders detect gzip and zstd).
//!
//! Invariants:
//! - Archives are written to a temp file beside the destination and
//!   renamed, so a failure leaves no partial archive.
//! - Archive entries are sorted, owned by 0:0 with mtime = the epoch given,
//!   so the same image gives a byte-identical archive.
//! - Only blobs reachable from the exported descriptor are copied, each
//!   verified against its digest on the way; into a layout on the staging
//!   area's filesystem they are hard-linked instead (the staging layout
//!   hashed them as it wrote them).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};

use crate::oci::layout::{Layout, LayoutError, canonical_json, empty_index};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The blobs an image needs, children before parents (layers, config,
/// manifests, then the index itself).
pub fn reachable(layout: &Layout, top: &Descriptor) -> Result<Vec<Descriptor>, ArchiveError> {
    let mut out = Vec::new();
    collect(layout, top, &mut out)?;
    let mut seen = std::collections::HashSet::new();
    out.retain(|d| seen.insert(d.digest().to_string()));
    Ok(out)
}

fn collect(layout: &Layout, d: &Descriptor, out: &mut Vec<Descriptor>) -> Result<(), ArchiveError> {
    match d.media_type() {
        MediaType::ImageIndex => {
            let index: ImageIndex = layout.read_json(d.digest())?;
            for m in index.manifests() {
                collect(layout, m, out)?;
            }
        }
        MediaType::ImageManifest => {
            let m: ImageManifest = layout.read_json(d.digest())?;
            out.extend(m.layers().iter().cloned());
            out.push(m.config().clone());
        }
        MediaType::Other(t) if t.contains("docker.distribution.manifest.v2") => {
            let m: ImageManifest = layout.read_json(d.digest())?;
            out.extend(m.layers().iter().cloned());
            out.push(m.config().clone());
        }
        other => {
            return Err(ArchiveError::Unsupported(format!(
                "cannot export a {other} as an image"
            )));
        }
    }
    let mut top = d.clone();
    top.set_platform(None);
    top.set_annotations(None);
    out.push(top);
    Ok(())
}

/// Copies the image `top` of `from` into the layout at `dir` and tags it.
pub fn to_layout(
    from: &Layout,
    top: &Descriptor,
    dir: &Path,
    tag: &str,
) -> Result<Layout, ArchiveError> {
    let dest = Layout::create(dir)?;
    for d in reachable(from, top)? {
        if dest.has_blob(d.digest()) || link_blob(from, &dest, d.digest()) {
            continue;
        }
        let mut r = from.open_blob(d.digest(), Some(d.size()))?;
        let mut w = dest.blob_writer()?;
        io::copy(&mut r, &mut w).map_err(|e| r.explain(e, &from.blob_path(d.digest())))?;
        w.finish(Some(d.digest()))?;
    }
    // The temp directory is composer's, not part of the layout format.
    let _ = fs::remove_dir(dest.root().join("blobs/.tmp"));
    dest.set_tag(top, tag)?;
    Ok(dest)
}

/// Links a blob of `from` into `to` when both lie on one filesystem: the
/// staging layout's blobs were hashed as they were written, so a link
/// carries them unchanged without reading them again. False when it cannot
/// (another filesystem, links refused): the caller copies and checks.
fn link_blob(from: &Layout, to: &Layout, digest: &oci_spec::image::Digest) -> bool {
    match fs::hard_link(from.blob_path(digest), to.blob_path(digest)) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::AlreadyExists,
    }
}

/// A deterministic tar written to `path` via a temp file.
struct ArchiveWriter {
    tar: Option<tar::Builder<io::BufWriter<fs::File>>>,
    tmp: PathBuf,
    path: PathBuf,
    epoch: u64,
    done: bool,
}

impl ArchiveWriter {
    fn create(path: &Path, epoch: u64) -> Result<Self, ArchiveError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let name = path
            .file_name()
            .map_or_else(|| "archive".into(), |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{name}.composer-tmp"));
        let f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(ArchiveWriter {
            tar: Some(tar::Builder::new(io::BufWriter::with_capacity(1 << 20, f))),
            tmp,
            path: path.to_path_buf(),
            epoch,
            done: false,
        })
    }

    fn tar(&mut self) -> &mut tar::Builder<io::BufWriter<fs::File>> {
        self.tar.as_mut().expect("the builder lives until finish")
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.epoch);
        h.set_size(size);
        h
    }

    fn dir(&mut self, name: &str) -> Result<(), ArchiveError> {
        let mut h = self.header(tar::EntryType::Directory, 0o755, 0);
        let tmp = self.tmp.clone();
        self.tar()
            .append_data(&mut h, format!("{name}/"), io::empty())
            .map_err(io_err(&tmp))
    }

    fn bytes(&mut self, name: &str, data: &[u8]) -> Result<(), ArchiveError> {
        let mut h = self.header(tar::EntryType::Regular, 0o644, data.len() as u64);
        let tmp = self.tmp.clone();
        self.tar()
            .append_data(&mut h, name, data)
            .map_err(io_err(&tmp))
    }

    fn blob(&mut self, layout: &Layout, d: &Descriptor) -> Result<(), ArchiveError> {
        let mut h = self.header(tar::EntryType::Regular, 0o644, d.size());
        let mut r = layout.open_blob(d.digest(), Some(d.size()))?;
        let name = format!("blobs/sha256/{}", d.digest().digest());
        // The tar crate reads exactly `size` bytes; the verifying reader
        // then needs one more read to see EOF and check the digest.
        self.tar()
            .append_data(&mut h, name, (&mut r).take(d.size()))
            .map_err(io_err(&layout.blob_path(d.digest())))?;
        let mut rest = [0u8; 1];
        match r.read(&mut rest) {
            Ok(0) => Ok(()),
            Ok(_) => Err(ArchiveError::Unsupported(format!(
                "blob {} is larger than its descriptor",
                d.digest()
            ))),
            Err(e) => Err(r.explain(e, &layout.blob_path(d.digest())).into()),
        }
    }

    fn finish(mut self) -> Result<(), ArchiveError> {
        let builder = self.tar.take().expect("finish runs once");
        let w = builder.into_inner().map_err(io_err(&self.tmp))?;
        let f = w.into_inner().map_err(|e| ArchiveError::Io {
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io_err(&self.tmp))?;
        fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn layout_entries(
    w: &mut ArchiveWriter,
    layout: &Layout,
    top: &Descriptor,
    tag: Option<&str>,
) -> Result<(), ArchiveError> {
    let blobs = reachable(layout, top)?;
    let mut sorted: Vec<&Descriptor> = blobs.iter().collect();
    sorted.sort_by(|a, b| a.digest().digest().cmp(b.digest().digest()));
    w.dir("blobs")?;
    w.dir("blobs/sha256")?;
    for d in sorted {
        w.blob(layout, d)?;
    }
    let mut entry = top.clone();
    if let Some(t) = tag {
        let mut ann = std::collections::HashMap::new();
        ann.insert(crate::oci::layout::REF_NAME.to_string(), t.to_string());
        entry.set_annotations(Some(ann));
    }
    let mut index = empty_index();
    index.set_manifests(vec![entry]);
    let json = canonical_json(&index).map_err(|e| ArchiveError::Unsupported(e.to_string()))?;
    w.bytes("index.json", &json)?;
    w.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// Writes `top` as an `oci-archive` tarball (an OCI layout in a tar).
pub fn to_oci_archive(
    layout: &Layout,
    top: &Descriptor,
    path: &Path,
    tag: Option<&str>,
    epoch: u64,
) -> Result<(), ArchiveError> {
    let mut w = ArchiveWriter::create(path, epoch)?;
    layout_entries(&mut w, layout, top, tag)?;
    w.finish()
}

/// Writes the single-platform image `manifest` as a `docker-archive`
/// tarball; `repo_tag` (`name:tag`) is what `docker load` names it.
pub fn to_docker_archive(
    layout: &Layout,
    manifest: &Descriptor,
    path: &Path,
    repo_tag: &str,
    epoch: u64,
) -> Result<(), ArchiveError> {
    if *manifest.media_type() != MediaType::ImageManifest {
        return Err(ArchiveError::Unsupported(format!(
            "a docker-archive holds one platform's image, not a {} (pick a platform, or write an oci-archive)",
            manifest.media_type()
        )));
    }
    let m: ImageManifest = layout.read_json(manifest.digest())?;
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.digest());
    let legacy = serde_json::json!([{
        "Config": blob(m.config().digest()),
        "RepoTags": [repo_tag],
        "Layers": m.layers().iter().map(|l| blob(l.digest())).collect::<Vec<_>>(),
    }]);
    let mut w = ArchiveWriter::create(path, epoch)?;
    layout_entries(&mut w, layout, manifest, Some(repo_tag))?;
    let json = canonical_json(&legacy).map_err(|e| ArchiveError::Unsupported(e.to_string()))?;
    w.bytes("manifest.json", &json)?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defs::Platform;
    use crate::oci::layer::{Compression, write_dir};
    use crate::output::image::{ImageMeta, write_image};
    use std::os::unix::fs::MetadataExt;

    fn staged(dir: &Path) -> (Layout, Descriptor, oci_spec::image::Digest) {
        fs::create_dir_all(dir.join("tree/usr/lib")).unwrap();
        fs::write(dir.join("tree/usr/lib/a.ko"), b"module").unwrap();
        let layout = Layout::create(&dir.join("staging")).unwrap();
        let layer = write_dir(&layout, &dir.join("tree"), Compression::Zstd, 0).unwrap();
        let digest = layer.descriptor.digest().clone();
        let meta = ImageMeta {
            labels: Default::default(),
            created: 0,
        };
        let top = write_image(&layout, Platform::LinuxAmd64, &[layer], &meta).unwrap();
        (layout, top, digest)
    }

    #[test]
    fn a_layout_on_the_staging_filesystem_links_the_blobs() {
        let t = tempfile::tempdir().unwrap();
        let (staging, top, layer) = staged(t.path());
        let out = to_layout(&staging, &top, &t.path().join("out"), "v1").unwrap();
        let meta = fs::metadata(out.blob_path(&layer)).unwrap();
        assert_eq!(meta.nlink(), 2, "the layer is the staging area's file");
        assert_eq!(out.resolve(Some("v1")).unwrap().digest(), top.digest());
    }

    #[test]
    fn a_layout_on_another_filesystem_gets_checked_copies() {
        let shm = Path::new("/dev/shm");
        let t = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir_in(shm).unwrap();
        let same_fs = fs::metadata(t.path()).unwrap().dev() == fs::metadata(shm).unwrap().dev();
        assert!(
            !same_fs,
            "/dev/shm must be another filesystem for this test"
        );
        let (staging, top, layer) = staged(t.path());
        let out = to_layout(&staging, &top, &other.path().join("out"), "v1").unwrap();
        assert_eq!(fs::metadata(out.blob_path(&layer)).unwrap().nlink(), 1);
        assert_eq!(
            fs::read(out.blob_path(&layer)).unwrap(),
            fs::read(staging.blob_path(&layer)).unwrap()
        );
    }
}
