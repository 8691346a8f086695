//! Where a node's module images come from: the reference (KMM's
//! `${KERNEL_FULL_VERSION}` replaced by the kernel release), the image read
//! with composer's own readers (`exec::image`: a registry, `oci:`,
//! `oci-archive:`, `docker-archive:`), a cache per kernel release, and the
//! modules and firmware inside the image.
//!
//! The cache (`--cache-dir`, on the node):
//! ```text
//! <cache>/<release>/index.json   {"references": {REF: {"digest": "sha256:…"}}}
//! <cache>/<release>/<hex>/       the image's filesystem, unpacked
//! ```
//! REF is the reference with the release substituted and a local path made
//! absolute. A fetched image is unpacked in a staging directory inside the
//! cache and enters it only once its modules passed verification
//! ([`Cache::commit`]); the tree is renamed into place whole and the index
//! replaced by rename, so both are always complete. When the image cannot
//! be had (registry unreachable, archive gone, `--offline`), the index
//! names the digest last installed from REF and its tree is used, which
//! the caller says. Trees no reference of the index names are removed.
//!
//! Where an image keeps modules for a release, in this order of layouts:
//! KMM kmod images `opt/lib/modules/<release>/` (firmware `firmware/`),
//! Talos system extensions `rootfs/usr/lib/modules/<release>/` (firmware
//! `rootfs/usr/lib/firmware/`, `rootfs/lib/firmware/`), and plain trees
//! `usr/lib/modules/<release>/`, `lib/modules/<release>/` (firmware
//! `usr/lib/firmware/`, `lib/firmware/`). Symlinks (a KMM image's `host`
//! link to the node's modules) are never followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{NodeError, io};
use crate::exec::image::{Fetch, resolve, unpack};
use crate::oci::reference::ImageRef;
use crate::validate::modules::module_name;

/// KMM's notation for the kernel release in an image reference.
pub const KERNEL_FULL_VERSION: &str = "${KERNEL_FULL_VERSION}";

/// An image reference, for one kernel release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// As given.
    pub given: String,
    /// The release substituted, a local path made absolute.
    pub resolved: String,
    /// The name it is installed under.
    pub name: String,
}

/// `given` for `release`; relative local paths are taken from `cwd`.
/// `name` overrides the name derived from the reference.
pub fn reference(
    given: &str,
    release: &str,
    cwd: &Path,
    name: Option<&str>,
) -> Result<Reference, NodeError> {
    let bad = |message: String| NodeError::Input(format!("`{given}`: {message}"));
    let substituted = given.replace(KERNEL_FULL_VERSION, release);
    if let Some(at) = substituted.find("${") {
        let var: String = substituted[at..]
            .chars()
            .take_while(|c| *c != '}')
            .collect();
        return Err(bad(format!(
            "unknown variable {var}}}: only {KERNEL_FULL_VERSION} is replaced (by the kernel release)"
        )));
    }
    let parsed: ImageRef = substituted
        .parse()
        .map_err(|e: crate::oci::ReferenceError| bad(e.message))?;
    let parsed = match parsed {
        ImageRef::Layout { dir, tag } => ImageRef::Layout {
            dir: cwd.join(dir),
            tag,
        },
        ImageRef::OciArchive { path, tag } => ImageRef::OciArchive {
            path: cwd.join(path),
            tag,
        },
        ImageRef::DockerArchive { path, name } => ImageRef::DockerArchive {
            path: cwd.join(path),
            name,
        },
        r => r,
    };
    let name = match name {
        Some(n) => n.to_string(),
        None => derive_name(&parsed, release).ok_or_else(|| {
            bad("no image name can be made from it: pass --name NAME".to_string())
        })?,
    };
    super::check_name(&name).map_err(|e| bad(format!("{e} (pass --name NAME)")))?;
    Ok(Reference {
        given: given.to_string(),
        resolved: parsed.to_string(),
        name,
    })
}

/// The last component of the repository, layout directory or archive file
/// (without `.tar`), with the release taken out: `hello-kmod` for
/// `oci-archive:/images/hello-kmod-6.1.0-57-cloud-amd64.tar`.
fn derive_name(r: &ImageRef, release: &str) -> Option<String> {
    let raw = match r {
        ImageRef::Registry(r) => r.repository.rsplit('/').next()?.to_string(),
        ImageRef::Layout { dir, .. } => dir.file_name()?.to_string_lossy().into_owned(),
        ImageRef::OciArchive { path, .. } | ImageRef::DockerArchive { path, .. } => {
            let file = path.file_name()?.to_string_lossy().into_owned();
            [".tar.gz", ".tgz", ".tar", ".oci"]
                .iter()
                .find_map(|s| file.strip_suffix(s))
                .unwrap_or(&file)
                .to_string()
        }
    };
    let name = raw
        .replace(release, "")
        .trim_matches(|c| matches!(c, '-' | '_' | '.' | '+'))
        .to_string();
    (!name.is_empty()).then_some(name)
}

/// The platform of this machine's images (`linux/amd64`).
pub fn node_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    references: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexEntry {
    digest: String,
}

/// The image cache on the node (a host path).
pub struct Cache {
    dir: PathBuf,
}

/// An image read for an install.
pub struct Fetched {
    pub reference: Reference,
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
    /// Its unpacked filesystem.
    pub tree: PathBuf,
    /// Why the cached copy was used instead of the image: the reason it
    /// could not be had. `None`: read from the reference now.
    pub cached_because: Option<String>,
    staging: Option<tempfile::TempDir>,
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    /// The cached tree of `digest` for `release`.
    pub fn tree(&self, release: &str, digest: &str) -> PathBuf {
        self.dir.join(release).join(hex_of(digest))
    }

    fn index_path(&self, release: &str) -> PathBuf {
        self.dir.join(release).join("index.json")
    }

    fn read_index(&self, release: &str) -> Result<Index, NodeError> {
        let path = self.index_path(release);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(source) => Err(NodeError::Io { path, source }),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NodeError::State {
                path,
                message: format!("not a cache index: {e}"),
            }),
        }
    }

    /// The digest cached for `reference`, when its tree is there.
    fn lookup(&self, release: &str, reference: &str) -> Result<Option<String>, NodeError> {
        let index = self.read_index(release)?;
        Ok(index
            .references
            .get(reference)
            .map(|e| e.digest.clone())
            .filter(|d| self.tree(release, d).is_dir()))
    }

    /// Reads `r` for `release`: from its source, else from the cache.
    pub fn fetch(
        &self,
        r: &Reference,
        release: &str,
        opts: &FetchOptions<'_>,
    ) -> Result<Fetched, NodeError> {
        let from_cache = |why: String| -> Result<Fetched, NodeError> {
            match self.lookup(release, &r.resolved)? {
                Some(digest) => Ok(Fetched {
                    reference: r.clone(),
                    tree: self.tree(release, &digest),
                    digest,
                    cached_because: Some(why),
                    staging: None,
                }),
                None => Err(NodeError::Image {
                    reference: r.given.clone(),
                    message: format!(
                        "{why}; and the cache ({}) holds no copy of {} for kernel {release}",
                        self.dir.display(),
                        r.resolved
                    ),
                }),
            }
        };
        if opts.offline {
            return from_cache("--offline forbids reading it".into());
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let staging = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&self.dir)
            .map_err(io(&self.dir))?;
        let store = staging.path().join("store");
        let fetch = Fetch {
            store: &store,
            offline: false,
            insecure: opts.insecure,
        };
        let resolved = match resolve(&r.resolved, opts.cwd, opts.platform, &fetch) {
            Ok(resolved) => resolved,
            Err(e) => return from_cache(e.to_string()),
        };
        let cached = self.tree(release, &resolved.digest);
        if cached.is_dir() {
            return Ok(Fetched {
                reference: r.clone(),
                digest: resolved.digest,
                tree: cached,
                cached_because: None,
                staging: None,
            });
        }
        let tree = staging.path().join("tree");
        unpack(&resolved, &tree).map_err(|e| NodeError::Image {
            reference: r.given.clone(),
            message: e.to_string(),
        })?;
        Ok(Fetched {
            reference: r.clone(),
            digest: resolved.digest,
            tree,
            cached_because: None,
            staging: Some(staging),
        })
    }

    /// Enters a verified image into the cache (its tree renamed into
    /// place, the index replaced) and drops trees no reference names.
    pub fn commit(&self, release: &str, f: &mut Fetched) -> Result<(), NodeError> {
        let dir = self.dir.join(release);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if let Some(staging) = f.staging.take() {
            let dest = self.tree(release, &f.digest);
            if dest.is_dir() {
                let old = staging.path().join("replaced");
                std::fs::rename(&dest, &old).map_err(io(&dest))?;
            }
            std::fs::rename(&f.tree, &dest).map_err(io(&dest))?;
            f.tree = dest;
        }
        let mut index = self.read_index(release)?;
        index.references.insert(
            f.reference.resolved.clone(),
            IndexEntry {
                digest: f.digest.clone(),
            },
        );
        let bytes = serde_json::to_vec_pretty(&index).expect("an index serializes");
        super::state::write_atomically(&self.index_path(release), &bytes)?;
        let named: BTreeSet<&str> = index
            .references
            .values()
            .map(|e| hex_of(&e.digest))
            .collect();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) && !named.contains(&*n) {
                let _ = crate::exec::fsops::remove_tree(&entry.path());
            }
        }
        Ok(())
    }
}

/// How images are read.
pub struct FetchOptions<'a> {
    pub cwd: &'a Path,
    pub platform: &'a str,
    pub offline: bool,
    pub insecure: bool,
}

/// The modules (and firmware) an image carries for one kernel release.
#[derive(Clone, Debug)]
pub struct ImageModules {
    /// `KMM kmod image`, `Talos system extension`, `image`.
    pub layout: &'static str,
    /// The release directory inside the image.
    pub dir: PathBuf,
    /// Module files, relative to `dir`, sorted.
    pub modules: Vec<PathBuf>,
    /// Firmware files and symlinks: (path under the firmware directory,
    /// path in the image), sorted.
    pub firmware: Vec<(PathBuf, PathBuf)>,
}

impl ImageModules {
    /// The same files after their tree moved from `from` to `to`.
    pub fn rebase(&mut self, from: &Path, to: &Path) {
        self.dir = rebased(&self.dir, from, to);
        for f in &mut self.firmware {
            f.1 = rebased(&f.1, from, to);
        }
    }
}

/// `p`, a path in the tree at `from`, in the same tree moved to `to`.
pub fn rebased(p: &Path, from: &Path, to: &Path) -> PathBuf {
    match p.strip_prefix(from) {
        Ok(rel) => to.join(rel),
        Err(_) => p.to_path_buf(),
    }
}

const LAYOUTS: [(&str, &str, &[&str]); 4] = [
    ("KMM kmod image", "opt/lib/modules", &["firmware"]),
    (
        "Talos system extension",
        "rootfs/usr/lib/modules",
        &["rootfs/usr/lib/firmware", "rootfs/lib/firmware"],
    ),
    ("image", "usr/lib/modules", &["usr/lib/firmware"]),
    ("image", "lib/modules", &["lib/firmware"]),
];

/// Module files under `dir`, relative to it, sorted; symlinks are not
/// followed nor taken.
fn module_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .filter(|e| {
            e.file_type().is_file() && module_name(&e.file_name().to_string_lossy()).is_some()
        })
        .filter_map(|e| e.path().strip_prefix(dir).ok().map(Path::to_path_buf))
        .collect()
}

/// The modules of `tree` for `release`; an image without any names the
/// releases it has modules for.
pub fn locate(tree: &Path, release: &str) -> Result<ImageModules, String> {
    let mut found = Vec::new();
    let mut releases = BTreeSet::new();
    for (layout, modules, firmware) in LAYOUTS {
        let base = tree.join(modules);
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let files = if is_dir {
                module_files(&entry.path())
            } else {
                Vec::new()
            };
            if files.is_empty() {
                continue;
            }
            let r = entry.file_name().to_string_lossy().into_owned();
            if r == release {
                found.push((layout, firmware, entry.path(), files));
            } else {
                releases.insert(r);
            }
        }
    }
    let (layout, firmware, dir, files) = match found.len() {
        1 => found.remove(0),
        0 if releases.is_empty() => {
            return Err(format!(
                "holds no kernel modules (looked in {})",
                LAYOUTS.map(|l| format!("{}/", l.1)).join(", ")
            ));
        }
        0 => {
            return Err(format!(
                "has no modules for kernel {release}; it has modules for: {}",
                releases.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        _ => {
            return Err(format!(
                "holds modules for kernel {release} in several places ({}): which to install is unclear",
                found
                    .iter()
                    .map(|f| f.2.strip_prefix(tree).unwrap_or(&f.2).display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    Ok(ImageModules {
        layout,
        dir,
        modules: files,
        firmware: firmware_files(tree, firmware),
    })
}

/// Regular files and symlinks under the firmware directories; the first
/// directory wins a path both have.
fn firmware_files(tree: &Path, dirs: &[&str]) -> Vec<(PathBuf, PathBuf)> {
    let mut out: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for d in dirs {
        let base = tree.join(d);
        for e in walkdir::WalkDir::new(&base)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            let t = e.file_type();
            if !(t.is_file() || t.is_symlink()) {
                continue;
            }
            if let Ok(rel) = e.path().strip_prefix(&base) {
                out.entry(rel.to_path_buf())
                    .or_insert_with(|| e.path().to_path_buf());
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "6.1.0-57-cloud-amd64";

    #[test]
    fn the_release_is_substituted_and_names_drop_it() {
        let cwd = Path::new("/work");
        let r = reference(
            "oci-archive:img/kmod-${KERNEL_FULL_VERSION}.tar",
            R,
            cwd,
            None,
        )
        .unwrap();
        assert_eq!(r.resolved, format!("oci-archive:/work/img/kmod-{R}.tar"));
        assert_eq!(r.name, "kmod");
        let r = reference(
            "ghcr.io/org/hello-kmod:${KERNEL_FULL_VERSION}",
            R,
            cwd,
            None,
        )
        .unwrap();
        assert_eq!(r.resolved, format!("ghcr.io/org/hello-kmod:{R}"));
        assert_eq!(r.name, "hello-kmod");
        let r = reference("oci:/x/layout:v1", R, cwd, Some("mine")).unwrap();
        assert_eq!(r.name, "mine");
    }

    #[test]
    fn unknown_variables_and_unnamable_references_are_refused() {
        let cwd = Path::new("/work");
        let e = reference("oci-archive:${KERNEL_VERSION}.tar", R, cwd, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variable ${KERNEL_VERSION}"), "{e}");
        let e = reference(&format!("oci-archive:/{R}.tar"), R, cwd, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pass --name"), "{e}");
        let e = reference("oci:/x", R, cwd, Some("../x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a usable image name"), "{e}");
    }

    #[test]
    fn modules_are_found_per_layout_and_other_releases_named() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        let put = |p: &str| {
            let p = t.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        put("opt/lib/modules/6.2.0/a.ko");
        let e = locate(t, R).unwrap_err();
        assert_eq!(
            e,
            format!("has no modules for kernel {R}; it has modules for: 6.2.0")
        );
        put(&format!("opt/lib/modules/{R}/extra/a.ko"));
        put(&format!("opt/lib/modules/{R}/modules.dep"));
        put("firmware/vendor/fw.bin");
        std::os::unix::fs::symlink("/lib/modules", t.join(format!("opt/lib/modules/{R}/host")))
            .unwrap();
        let m = locate(t, R).unwrap();
        assert_eq!(m.layout, "KMM kmod image");
        assert_eq!(m.modules, vec![PathBuf::from("extra/a.ko")]);
        assert_eq!(m.firmware[0].0, PathBuf::from("vendor/fw.bin"));
        put(&format!("lib/modules/{R}/b.ko"));
        assert!(locate(t, R).unwrap_err().contains("several places"));
        let empty = tempfile::tempdir().unwrap();
        assert!(
            locate(empty.path(), R)
                .unwrap_err()
                .starts_with("holds no kernel modules")
        );
    }
}
