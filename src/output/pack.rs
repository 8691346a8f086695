//! From a built stage to a validated image in a staging layout: picks
//! what the image is (a system extension or a KMM kmod image), assembles
//! its tree, runs the validation rules over exactly what will be packed,
//! and only then writes layers and manifest.
//!
//! Invariant: an image whose tree breaks an error-severity rule is never
//! written — the rules run before the first blob, and on failure the
//! staging area (the only place written to) is dropped with the error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;

use super::extension::{self, ManifestInfo};
use super::image::{ImageMeta, write_image};
use super::publish::Staging;
use super::{OutputError, kmod};
use crate::defs::Platform;
use crate::oci::layer::{Compression, write_dir};
use crate::validate::{self, Context, Kind, Report, Selection};

/// What kind of image a stage becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A Talos system extension (the stage holds manifest.yaml + rootfs/).
    Extension,
    /// A Kernel Module Management kmod image; `host_link` adds
    /// `/opt/lib/modules/<release>/host -> /lib/modules/<release>`.
    Kmm { host_link: bool },
    /// A base installer image (the stage holds `usr/install/<arch>/vmlinuz`
    /// and `initramfs.xz`, Talos' layout): the tree as it is, checked by
    /// every rootfs rule but `fhs` (Talos defines `/usr/install`).
    Installer,
}

/// True when `tree` holds an installer's artifacts for some architecture.
pub fn is_installer(tree: &Path) -> bool {
    std::fs::read_dir(tree.join("usr/install"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("vmlinuz").is_file() && e.path().join("initramfs.xz").is_file())
}

/// Everything needed to turn one stage output into an image.
pub struct Request<'a> {
    pub target: &'a str,
    /// The stage's exported filesystem.
    pub tree: &'a Path,
    pub kind: ImageKind,
    pub platform: Platform,
    /// Labels from the Pkgfile.
    pub labels: BTreeMap<String, String>,
    pub compression: Compression,
    pub epoch: u64,
    /// What the rules check against (trusted certificates, secrets).
    pub context: Context,
    pub selection: Selection,
    /// The target's `VERSION` variable, when it has one: an installer
    /// image's tag.
    pub version: Option<String>,
}

/// A validated image, written into its own staging layout.
pub struct Packed {
    pub staging: Staging,
    pub top: Descriptor,
    /// The tag: the extension's version, or the kernel release for KMM.
    pub tag: String,
    pub report: Report,
    pub info: ManifestInfo,
}

/// Validates and packs `req.tree`; the staging area lives under `near`.
pub fn pack(req: Request<'_>, near: &Path) -> Result<Packed, OutputError> {
    let staging = Staging::new(near)?;
    let mut ctx = req.context;
    let (root, tag, info): (PathBuf, String, ManifestInfo) = match req.kind {
        ImageKind::Extension => {
            let info = extension::manifest_info(req.tree).unwrap_or_default();
            ctx.kind = Kind::Extension;
            if ctx.package.is_none() {
                ctx.package = Some(req.target.to_string());
            }
            let tag = if info.version.is_empty() {
                "latest".to_string()
            } else {
                info.version.clone()
            };
            (req.tree.to_path_buf(), tag, info)
        }
        ImageKind::Kmm { host_link } => {
            let work = staging.scratch("kmm");
            let release = kmod::assemble(req.tree, &work, host_link)?;
            ctx.kind = Kind::KmodImage;
            ctx.allow_in_tree_deps = host_link;
            (work, release, ManifestInfo::default())
        }
        ImageKind::Installer => {
            ctx.kind = Kind::Rootfs;
            let tag = req.version.clone().unwrap_or_else(|| "latest".to_string());
            (req.tree.to_path_buf(), tag, ManifestInfo::default())
        }
    };
    let mut selection = req.selection.clone();
    if req.kind == ImageKind::Installer && selection.only.is_empty() {
        selection.skip.push("fhs".to_string());
    }
    let report = validate::validate(&root, &ctx, &selection).map_err(|e| OutputError::Input {
        path: root.clone(),
        message: e.to_string(),
    })?;
    if report.has_errors() {
        return Err(OutputError::Rules {
            target: req.target.to_string(),
            report,
        });
    }
    let labels = extension::labels(&req.labels, req.target, &tag, &info.description, req.epoch);
    let layer = write_dir(&staging.layout, &root, req.compression, req.epoch)?;
    let meta = ImageMeta {
        labels,
        created: req.epoch,
    };
    let top = write_image(&staging.layout, req.platform, &[layer], &meta)?;
    Ok(Packed {
        staging,
        top,
        tag,
        report,
        info,
    })
}
