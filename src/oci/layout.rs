//! An OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) used as a content-addressed blob store.
//!
//! Invariants:
//! - A blob is written to `blobs/.tmp/` while it is hashed, then renamed
//!   to `blobs/sha256/<its digest>`: a crash leaves at most a temp file,
//!   never a blob whose name lies. Stale temp files are removed when a
//!   layout is opened for writing.
//! - When the caller knows the digest (a pull), a mismatch is an error and
//!   nothing is renamed.
//! - Every blob read through [`Layout::read_blob`] / [`Layout::open_blob`]
//!   is checked against its digest.
//! - `index.json` is replaced atomically; a tag names one manifest (its
//!   `org.opencontainers.image.ref.name` annotation), so tagging again
//!   replaces the earlier entry.
//! - JSON blobs are written canonically (sorted keys), so equal content
//!   always has an equal digest.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageIndexBuilder, MediaType, Sha256Digest};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The annotation that carries a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not an OCI image layout (no oci-layout file)")]
    NotLayout(PathBuf),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("blob {expected}: content has digest {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest}: size {actual}, descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("{layout}: no image tagged `{tag}` (tags: {available})")]
    NoSuchTag {
        layout: PathBuf,
        tag: String,
        available: String,
    },
    #[error("{0}: several images and no tag given; name one with :TAG")]
    Ambiguous(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `sha256:<hex>` as an oci-spec digest.
pub fn sha256_digest(hex: &str) -> Digest {
    let d: Sha256Digest = hex
        .parse()
        .expect("a sha256 hasher yields 64 lowercase hex digits");
    d.into()
}

/// An OCI image layout on disk.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens `dir` as a layout, creating an empty one when it does not
    /// exist (or is an empty directory). Stale temp blobs are removed.
    pub fn create(dir: &Path) -> Result<Layout, LayoutError> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let layout = Layout {
            root: dir.to_path_buf(),
        };
        if !dir.join("index.json").exists() {
            layout.write_index(&empty_index())?;
        }
        let tmp = layout.tmp_dir();
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        Ok(layout)
    }

    /// Opens an existing layout for reading.
    pub fn open(dir: &Path) -> Result<Layout, LayoutError> {
        if !dir.join("oci-layout").is_file() {
            return Err(LayoutError::NotLayout(dir.to_path_buf()));
        }
        Ok(Layout {
            root: dir.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("blobs/.tmp")
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_ref())
            .join(digest.digest())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A writer for a new blob; see [`BlobWriter::finish`].
    pub fn blob_writer(&self) -> Result<BlobWriter, LayoutError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let path = tmp.join(format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = fs::File::create(&path).map_err(io_err(&path))?;
        Ok(BlobWriter {
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),
            path,
            hasher: Sha256::new(),
            size: 0,
            blobs: self.root.join("blobs/sha256"),
        })
    }

    /// Stores `bytes` as a blob.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<(Digest, u64), LayoutError> {
        let mut w = self.blob_writer()?;
        w.write_all(bytes).map_err(io_err(&w.path))?;
        w.finish(None)
    }

    /// Stores `value` as canonical JSON and returns its descriptor.
    pub fn write_json<T: Serialize>(
        &self,
        media_type: MediaType,
        value: &T,
    ) -> Result<Descriptor, LayoutError> {
        let bytes = canonical_json(value).map_err(|e| LayoutError::Invalid {
            path: self.root.clone(),
            message: format!("serialising {media_type}: {e}"),
        })?;
        let (digest, size) = self.write_blob(&bytes)?;
        Ok(Descriptor::new(media_type, size, digest))
    }

    /// A reader over a blob that fails at EOF when the content does not
    /// match `digest` (and `size`, when given).
    pub fn open_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<VerifyingReader<fs::File>, LayoutError> {
        let path = self.blob_path(digest);
        let file = fs::File::open(&path).map_err(io_err(&path))?;
        Ok(VerifyingReader::new(file, digest.clone(), size))
    }

    /// Reads a whole (small) blob, checked against its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, LayoutError> {
        let mut r = self.open_blob(digest, None)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| r.explain(e, &self.blob_path(digest)))?;
        Ok(out)
    }

    /// Reads a JSON blob (manifest, index, config).
    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        digest: &Digest,
    ) -> Result<T, LayoutError> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
            path: self.blob_path(digest),
            message: format!("not valid JSON of the expected kind: {e}"),
        })
    }

    pub fn index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
            path,
            message: format!("not an OCI image index: {e}"),
        })
    }

    pub fn write_index(&self, index: &ImageIndex) -> Result<(), LayoutError> {
        let path = self.root.join("index.json");
        let bytes = canonical_json(index).map_err(|e| LayoutError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &bytes)
    }

    /// Names `desc` (a manifest or an index) `tag` in `index.json`,
    /// replacing an entry with the same tag.
    pub fn set_tag(&self, desc: &Descriptor, tag: &str) -> Result<(), LayoutError> {
        let mut index = self.index()?;
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| tag_of(d) != Some(tag))
            .cloned()
            .collect();
        let mut d = desc.clone();
        let mut ann: HashMap<String, String> = d.annotations().clone().unwrap_or_default();
        ann.insert(REF_NAME.to_string(), tag.to_string());
        d.set_annotations(Some(ann));
        manifests.push(d);
        index.set_manifests(manifests);
        self.write_index(&index)
    }

    /// The top-level descriptor named `tag`, or the only one when `tag`
    /// is `None`.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor, LayoutError> {
        let index = self.index()?;
        let all = index.manifests();
        match tag {
            Some(t) => all
                .iter()
                .find(|d| tag_of(d) == Some(t))
                .cloned()
                .ok_or_else(|| {
                    let tags: Vec<&str> = all.iter().filter_map(tag_of).collect();
                    LayoutError::NoSuchTag {
                        layout: self.root.clone(),
                        tag: t.to_string(),
                        available: if tags.is_empty() {
                            "none".into()
                        } else {
                            tags.join(", ")
                        },
                    }
                }),
            None if all.len() == 1 => Ok(all[0].clone()),
            None if all.is_empty() => Err(LayoutError::Invalid {
                path: self.root.join("index.json"),
                message: "holds no image".into(),
            }),
            None => Err(LayoutError::Ambiguous(self.root.clone())),
        }
    }
}

/// The tag of an `index.json` entry.
pub fn tag_of(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref()?.get(REF_NAME).map(String::as_str)
}

pub fn empty_index() -> ImageIndex {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .build()
        .expect("an index with schema version and manifests is complete")
}

/// JSON with object keys in sorted order and no whitespace. oci-spec keeps
/// labels and annotations in hash maps, whose order changes from run to
/// run; going through `serde_json::Value` (a sorted map) makes the bytes,
/// and so the digests, depend on the content only.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&serde_json::to_value(value)?)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let tmp = path.with_extension("composer-tmp");
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Hashes while it writes to a temp file; [`finish`](Self::finish) renames
/// the file to its digest. Dropped unfinished, it removes the temp file.
pub struct BlobWriter {
    file: Option<io::BufWriter<fs::File>>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    blobs: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already finished"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Syncs, checks the digest against `expected` when given, and renames
    /// the blob into place.
    pub fn finish(mut self, expected: Option<&Digest>) -> Result<(Digest, u64), LayoutError> {
        let file = self.file.take().expect("finish consumes the writer");
        let file = file.into_inner().map_err(|e| LayoutError::Io {
            path: self.path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(&self.path))?;
        drop(file);
        let hex = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let digest = sha256_digest(&hex);
        if let Some(e) = expected
            && e != &digest
        {
            return Err(LayoutError::DigestMismatch {
                expected: e.to_string(),
                actual: digest.to_string(),
            });
        }
        let dest = self.blobs.join(&hex);
        fs::rename(&self.path, &dest).map_err(io_err(&dest))?;
        Ok((digest, self.size))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Unfinished or failed: the temp file never becomes a blob.
        let _ = fs::remove_file(&self.path);
    }
}

/// Passes bytes through and, at EOF, fails with `InvalidData` when the
/// content does not match the expected digest or size.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Digest,
    size: Option<u64>,
    read: u64,
    mismatch: Option<LayoutError>,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, size: Option<u64>) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            expected,
            size,
            read: 0,
            mismatch: None,
        }
    }

    /// Turns an error from `read` into a [`LayoutError`], keeping the
    /// digest mismatch when that was the cause.
    pub fn explain(&mut self, e: io::Error, path: &Path) -> LayoutError {
        self.mismatch.take().unwrap_or_else(|| LayoutError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if let Some(s) = self.size
            && self.read > s
        {
            self.mismatch = Some(LayoutError::SizeMismatch {
                digest: self.expected.to_string(),
                expected: s,
                actual: self.read,
            });
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "blob larger than its descriptor",
            ));
        }
        if n == 0 && !buf.is_empty() {
            let hex = hex::encode(std::mem::take(&mut self.hasher).finalize());
            let actual = sha256_digest(&hex);
            if actual != self.expected || self.size.is_some_and(|s| s != self.read) {
                let err = if actual != self.expected {
                    LayoutError::DigestMismatch {
                        expected: self.expected.to_string(),
                        actual: actual.to_string(),
                    }
                } else {
                    LayoutError::SizeMismatch {
                        digest: self.expected.to_string(),
                        expected: self.size.unwrap_or(0),
                        actual: self.read,
                    }
                };
                let msg = err.to_string();
                self.mismatch = Some(err);
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_named_by_its_digest_and_reads_back_verified() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(&dir.path().join("l")).unwrap();
        let (d, n) = l.write_blob(b"hello").unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(l.read_blob(&d).unwrap(), b"hello");
        fs::write(l.blob_path(&d), b"hellO").unwrap();
        assert!(matches!(
            l.read_blob(&d),
            Err(LayoutError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn unfinished_blob_leaves_no_blob() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(dir.path()).unwrap();
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"x").unwrap();
        let wrong = sha256_digest(&"0".repeat(64));
        assert!(matches!(
            w.finish(Some(&wrong)),
            Err(LayoutError::DigestMismatch { .. })
        ));
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn tagging_again_replaces_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(dir.path()).unwrap();
        let a = l
            .write_json(MediaType::ImageConfig, &serde_json::json!({"a": 1}))
            .unwrap();
        let b = l
            .write_json(MediaType::ImageConfig, &serde_json::json!({"b": 1}))
            .unwrap();
        l.set_tag(&a, "v1").unwrap();
        l.set_tag(&b, "v1").unwrap();
        l.set_tag(&a, "v2").unwrap();
        assert_eq!(l.resolve(Some("v1")).unwrap().digest(), b.digest());
        assert!(matches!(l.resolve(None), Err(LayoutError::Ambiguous(_))));
        assert!(matches!(
            l.resolve(Some("v3")),
            Err(LayoutError::NoSuchTag { .. })
        ));
    }
}
