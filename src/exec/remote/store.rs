//! Where shared entries live: a registry repository (`host/repo`) or an
//! OCI layout directory (`oci:DIR`, for an air-gapped copy). Both hold the
//! same artifacts under the same tags (`artifact`); this module hides the
//! transport.
//!
//! Invariants:
//! - Reading never trusts a name: a registry's manifests are checked
//!   against their digests and blobs against theirs while they are read
//!   (`oci::registry::pull`); a layout's blobs are checked when read.
//! - Writing puts blobs first and the tag last (the registry client's
//!   order; `Layout::set_tag` after the blobs), so a reader never finds a
//!   tag whose content is missing. Writers of a layout store take turns
//!   (a lock on its directory); a registry orders its own writes.
//! - A registry that answers "no such tag or repository" is a miss; any
//!   other failure is an error for the caller to report, never a miss.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageManifest, MediaType};

use super::RemoteError;
use super::artifact::{self, SESSION_ANNOTATION};
use crate::oci::layout::{Layout, LayoutError};
use crate::oci::reference::{RegistryRef, parse_registry};
use crate::oci::registry::{self, RegistryOptions};

/// A place entries are shared through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    Registry(RegistryRef),
    Layout(PathBuf),
}

impl std::str::FromStr for Store {
    type Err = String;
    fn from_str(s: &str) -> Result<Store, String> {
        if let Some(dir) = s.strip_prefix("oci:") {
            if dir.is_empty() || dir.contains(':') {
                return Err(format!(
                    "`{s}`: expected oci:DIR (a layout directory, no tag)"
                ));
            }
            return Ok(Store::Layout(PathBuf::from(dir)));
        }
        let mut r = parse_registry(s).map_err(|e| format!("`{s}`: {e}"))?;
        let last = s.rsplit('/').next().unwrap_or(s);
        if last.contains(':') || s.contains('@') {
            return Err(format!(
                "`{s}`: a cache is a repository (host/name), not a tag or digest: entries are tagged by their stage keys"
            ));
        }
        r.tag = None;
        Ok(Store::Registry(r))
    }
}

impl Store {
    /// Whether reaching it needs the network.
    pub fn is_registry(&self) -> bool {
        matches!(self, Store::Registry(_))
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Store::Registry(r) => write!(f, "{}/{}", r.registry, r.repository),
            Store::Layout(d) => write!(f, "oci:{}", d.display()),
        }
    }
}

/// A stage artifact found in a store, with its blobs in `layout`.
pub struct Found {
    pub layout: Layout,
    pub manifest: Descriptor,
}

impl Store {
    /// The stage artifact tagged `tag` (or with manifest digest `digest`),
    /// its blobs fetched into `staging` for a registry; `None` when the
    /// store has none. `found` hears the size of its blobs once the
    /// manifest is read, before they are.
    pub fn fetch(
        &self,
        tag: &str,
        digest: Option<&str>,
        staging: &Path,
        opts: &RegistryOptions,
        found: &mut dyn FnMut(u64),
    ) -> Result<Option<Found>, RemoteError> {
        match self {
            Store::Registry(repo) => {
                let mut r = repo.with_tag(tag);
                r.digest = digest.map(str::to_string);
                let Some((_, bytes)) = registry::manifest_bytes(&r, opts)? else {
                    return Ok(None);
                };
                found(blob_bytes(&bytes));
                let layout = Layout::create(staging)?;
                let manifest = registry::pull(&r, None, &layout, tag, opts, &|_| {})?;
                Ok(Some(Found { layout, manifest }))
            }
            Store::Layout(dir) => {
                let Some(layout) = open_layout(dir)? else {
                    return Ok(None);
                };
                let manifest = match digest {
                    Some(d) => artifact::manifest_descriptor(d, 0)?,
                    None => match layout.resolve(Some(tag)) {
                        Ok(d) => d,
                        Err(LayoutError::NoSuchTag { .. }) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    },
                };
                found(blob_bytes(&layout.read_blob(manifest.digest())?));
                Ok(Some(Found { layout, manifest }))
            }
        }
    }

    /// The signing session the stage entry tagged `tag` belongs to, read
    /// from its manifest's annotations (nothing else is downloaded).
    pub fn session_of(
        &self,
        tag: &str,
        opts: &RegistryOptions,
    ) -> Result<Option<String>, RemoteError> {
        let Some(bytes) = self.manifest(tag, opts)? else {
            return Ok(None);
        };
        let m: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| RemoteError::Invalid(format!("manifest {tag}: {e}")))?;
        Ok(m.annotations()
            .as_ref()
            .and_then(|a| a.get(SESSION_ANNOTATION))
            .cloned())
    }

    /// The members of the session index tagged `tag` (key → manifest).
    pub fn session_members(
        &self,
        tag: &str,
        opts: &RegistryOptions,
    ) -> Result<Option<BTreeMap<String, Descriptor>>, RemoteError> {
        let Some(bytes) = self.manifest(tag, opts)? else {
            return Ok(None);
        };
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| RemoteError::Invalid(format!("session index {tag}: {e}")))?;
        let mut out = BTreeMap::new();
        for m in index.manifests() {
            let key = m
                .annotations()
                .as_ref()
                .and_then(|a| a.get(artifact::KEY_ANNOTATION))
                .ok_or_else(|| {
                    RemoteError::Invalid(format!("session index {tag}: an entry without a key"))
                })?;
            out.insert(key.clone(), m.clone());
        }
        Ok(Some(out))
    }

    /// Every tag the store holds.
    pub fn tags(&self, opts: &RegistryOptions) -> Result<Vec<String>, RemoteError> {
        match self {
            Store::Registry(repo) => Ok(registry::tags(repo, opts)?),
            Store::Layout(dir) => Ok(match open_layout(dir)? {
                None => Vec::new(),
                Some(l) => l
                    .index()?
                    .manifests()
                    .iter()
                    .filter_map(|d| crate::oci::layout::tag_of(d).map(str::to_string))
                    .collect(),
            }),
        }
    }

    /// Whether the store has something tagged `tag`.
    pub fn has(&self, tag: &str, opts: &RegistryOptions) -> Result<bool, RemoteError> {
        match self {
            Store::Registry(repo) => {
                Ok(registry::manifest_digest(&repo.with_tag(tag), opts)?.is_some())
            }
            Store::Layout(dir) => Ok(match open_layout(dir)? {
                None => false,
                Some(l) => l.resolve(Some(tag)).is_ok(),
            }),
        }
    }

    /// The exact bytes of the manifest or index with `digest`, or `None`.
    pub fn manifest_at(
        &self,
        digest: &str,
        opts: &RegistryOptions,
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        match self {
            Store::Registry(repo) => {
                let mut r = repo.clone();
                r.digest = Some(digest.to_string());
                Ok(registry::manifest_bytes(&r, opts)?.map(|(_, b)| b))
            }
            Store::Layout(dir) => {
                let Some(layout) = open_layout(dir)? else {
                    return Ok(None);
                };
                let d = digest
                    .parse::<oci_spec::image::Digest>()
                    .map_err(|e| RemoteError::Invalid(format!("{digest}: {e}")))?;
                if !layout.has_blob(&d) {
                    return Ok(None);
                }
                Ok(Some(layout.read_blob(&d)?))
            }
        }
    }

    /// The exact bytes of what `tag` names, or `None`.
    fn manifest(&self, tag: &str, opts: &RegistryOptions) -> Result<Option<Vec<u8>>, RemoteError> {
        match self {
            Store::Registry(repo) => {
                Ok(registry::manifest_bytes(&repo.with_tag(tag), opts)?.map(|(_, b)| b))
            }
            Store::Layout(dir) => {
                let Some(layout) = open_layout(dir)? else {
                    return Ok(None);
                };
                match layout.resolve(Some(tag)) {
                    Ok(d) => Ok(Some(layout.read_blob(d.digest())?)),
                    Err(LayoutError::NoSuchTag { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Stores what `layout` holds under `tag` (a stage manifest or a
    /// session index with its members): pushed to a registry, or copied
    /// into a layout store. Returns the bytes sent.
    pub fn put(
        &self,
        layout: &Layout,
        desc: &Descriptor,
        tag: &str,
        opts: &RegistryOptions,
    ) -> Result<u64, RemoteError> {
        match self {
            Store::Registry(repo) => {
                layout.set_tag(desc, tag)?;
                let pushed = registry::push(layout, Some(tag), &repo.with_tag(tag), opts, &|_| {})?;
                let mut sent = 0;
                for d in &pushed.uploaded {
                    sent += std::fs::metadata(layout.blob_path(d)).map_or(0, |m| m.len());
                }
                Ok(sent)
            }
            Store::Layout(dir) => {
                let _lock = lock_layout(dir)?;
                let to = Layout::create(dir)?;
                let sent = copy_blobs(layout, &to, desc)?;
                to.set_tag(desc, tag)?;
                Ok(sent)
            }
        }
    }
}

/// The bytes of the blobs a manifest names (0 when it is not one: reading
/// it later says what is wrong).
fn blob_bytes(manifest: &[u8]) -> u64 {
    serde_json::from_slice::<ImageManifest>(manifest).map_or(0, |m| {
        m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>()
    })
}

/// The lock file of a layout store: a regular file opened for writing
/// (on NFS `flock` becomes a POSIX lock, which needs one). Tools that read
/// the layout ignore it.
const LAYOUT_LOCK: &str = ".composer-lock";

/// An exclusive lock on a layout store, held while one writer copies
/// blobs and retags: `index.json` is read, changed and replaced, and
/// opening a layout for writing clears its temp blobs, so two writers at
/// once would lose a tag or a blob in flight. Readers need no lock
/// (`index.json` is replaced whole, blobs are renamed into place).
fn lock_layout(dir: &Path) -> Result<std::fs::File, RemoteError> {
    let path = dir.join(LAYOUT_LOCK);
    let fail = |e: std::io::Error| RemoteError::Invalid(format!("locking {}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let handle = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(fail)?;
    rustix::fs::flock(&handle, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| fail(e.into()))?;
    Ok(handle)
}

fn open_layout(dir: &Path) -> Result<Option<Layout>, RemoteError> {
    match Layout::open(dir) {
        Ok(l) => Ok(Some(l)),
        Err(LayoutError::NotLayout(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Copies what `desc` reaches (a manifest's config and layers, or an
/// index's manifests and theirs) from `from` to `to`, blobs before the
/// documents naming them; returns the bytes copied.
fn copy_blobs(from: &Layout, to: &Layout, desc: &Descriptor) -> Result<u64, RemoteError> {
    let mut sent = 0;
    let mut children = Vec::new();
    if *desc.media_type() == MediaType::ImageIndex {
        let index: oci_spec::image::ImageIndex = from.read_json(desc.digest())?;
        for m in index.manifests() {
            sent += copy_blobs(from, to, m)?;
        }
    } else {
        let m: ImageManifest = from.read_json(desc.digest())?;
        children.push(m.config().clone());
        children.extend(m.layers().iter().cloned());
    }
    children.push(desc.clone());
    for d in children {
        if to.has_blob(d.digest()) {
            continue;
        }
        let mut r = from.open_blob(d.digest(), None)?;
        let mut w = to.blob_writer()?;
        std::io::copy(&mut r, &mut w).map_err(|e| r.explain(e, &from.blob_path(d.digest())))?;
        sent += w.finish(Some(d.digest()))?.1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};

    use super::Store;
    use crate::oci::layout::Layout;
    use crate::oci::registry::RegistryOptions;

    /// A small manifest of its own in a staging layout.
    fn manifest(staging: &Layout, n: usize) -> Descriptor {
        let (digest, size) = staging
            .write_blob(format!("config {n}").as_bytes())
            .unwrap();
        let config = Descriptor::new(MediaType::ImageConfig, size, digest);
        let m = ImageManifestBuilder::default()
            .schema_version(2u32)
            .config(config)
            .layers(Vec::new())
            .build()
            .unwrap();
        staging.write_json(MediaType::ImageManifest, &m).unwrap()
    }

    #[test]
    fn writers_at_once_in_one_layout_store_lose_no_tag_and_no_blob() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::Layout(t.path().join("store"));
        let opts = RegistryOptions::default();
        std::thread::scope(|s| {
            for w in 0..6 {
                let (store, opts, root) = (&store, &opts, t.path());
                s.spawn(move || {
                    let staging = Layout::create(&root.join(format!("staging-{w}"))).unwrap();
                    for n in 0..30 {
                        let desc = manifest(&staging, w * 100 + n);
                        store
                            .put(&staging, &desc, &format!("w{w}-{n}"), opts)
                            .unwrap();
                    }
                });
            }
        });
        let mut tags = store.tags(&opts).unwrap();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), 6 * 30);
    }
}
