//! Puts an image held in a staging layout where the user asked for it:
//! `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:NAME:TAG]`
//! or a registry reference (pushed).
//!
//! The staging layout is private to one run and removed by its owner; the
//! destination is only touched once the image is complete, and archives
//! appear whole (temp file + rename) or not at all.

use std::path::Path;

use oci_spec::image::Descriptor;

use super::OutputError;
use super::archive::{to_docker_archive, to_layout, to_oci_archive};
use crate::oci::layout::Layout;
use crate::oci::reference::ImageRef;

/// Where an image went, for the user.
#[derive(Clone, Debug)]
pub struct Published {
    /// The destination as given (with the tag filled in).
    pub destination: String,
    /// `sha256:<hex>` of the manifest or index.
    pub digest: String,
}

/// A staging layout in a hidden directory next to `near`, removed when
/// dropped.
pub struct Staging {
    dir: tempfile::TempDir,
    pub layout: Layout,
}

impl Staging {
    pub fn new(near: &Path) -> Result<Staging, OutputError> {
        std::fs::create_dir_all(near).map_err(|source| OutputError::Io {
            path: near.to_path_buf(),
            source,
        })?;
        let dir = tempfile::Builder::new()
            .prefix(".composer-staging-")
            .tempdir_in(near)
            .map_err(|source| OutputError::Io {
                path: near.to_path_buf(),
                source,
            })?;
        let layout = Layout::create(&dir.path().join("layout"))?;
        Ok(Staging { dir, layout })
    }

    /// The staging directory (to keep it out of a tree being packed).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A scratch directory inside the staging area (for assembled trees).
    pub fn scratch(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// Writes `top` from `staging` to a local destination; `name` and
/// `default_tag` fill in what the reference leaves out. Registry
/// references go through [`super::push`].
pub fn write_local(
    staging: &Layout,
    top: &Descriptor,
    dest: &ImageRef,
    name: &str,
    default_tag: &str,
    epoch: u64,
) -> Result<Published, OutputError> {
    let digest = top.digest().to_string();
    let destination = match dest {
        ImageRef::Layout { dir, tag } => {
            let tag = tag.as_deref().unwrap_or(default_tag);
            to_layout(staging, top, dir, tag)?;
            format!("oci:{}:{tag}", dir.display())
        }
        ImageRef::OciArchive { path, tag } => {
            let tag = tag.as_deref().unwrap_or(default_tag);
            to_oci_archive(staging, top, path, Some(tag), epoch)?;
            format!("oci-archive:{}:{tag}", path.display())
        }
        ImageRef::DockerArchive { path, name: n } => {
            let repo_tag = n.clone().unwrap_or_else(|| format!("{name}:{default_tag}"));
            to_docker_archive(staging, top, path, &repo_tag, epoch)?;
            format!("docker-archive:{}:{repo_tag}", path.display())
        }
        ImageRef::Registry(r) => {
            return Err(OutputError::Input {
                path: r.to_string().into(),
                message: "a registry destination is pushed, not written".into(),
            });
        }
    };
    Ok(Published {
        destination,
        digest,
    })
}
