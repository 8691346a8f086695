//! The installer image: the base installer image's layers, unchanged, plus
//! one artifacts layer holding `usr/install/<arch>/vmlinuz` and the
//! rebuilt `initramfs.xz`, written into a staging layout (then exported as
//! a `docker-archive`, and pushed when asked).
//!
//! Invariants:
//! - Base layers are copied blob for blob, each verified against its
//!   digest; Docker media types become their OCI equivalents.
//! - The artifacts layer is an uncompressed tar: the kernel image and the
//!   initramfs in it are compressed already, so gzip would spend seconds
//!   (about 40 MB/s) to save less than 0.1 %.
//! - The configuration is the base's, with the artifacts layer's diff ID
//!   appended, `created` set to the epoch given (never the clock), and a
//!   history entry added only when the base has history.

use std::io;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageManifest, ImageManifestBuilder, MediaType};

use super::InstallerError;
use crate::exec::image::Resolved;
use crate::oci::layer::{Compression, write_dir};
use crate::oci::layout::Layout;
use crate::output::image::rfc3339;

fn base_err(message: impl std::fmt::Display) -> InstallerError {
    InstallerError::Base {
        message: message.to_string(),
    }
}

fn oci_layer_type(t: &MediaType) -> MediaType {
    match t.to_string().as_str() {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => MediaType::ImageLayerGzip,
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => MediaType::ImageLayerZstd,
        "application/vnd.docker.image.rootfs.diff.tar" => MediaType::ImageLayer,
        _ => t.clone(),
    }
}

/// Writes the installer image into `staging` and returns its manifest's
/// descriptor. `artifacts` is a tree holding `usr/install/<arch>/...`.
pub fn write(
    staging: &Layout,
    base: &Resolved,
    artifacts: &Path,
    epoch: u64,
) -> Result<Descriptor, InstallerError> {
    let from = Layout::open(&base.layout).map_err(base_err)?;
    let manifest: ImageManifest = from
        .read_json(&base.digest.parse().map_err(base_err)?)
        .map_err(|e| base_err(format!("{}: manifest: {e}", base.reference)))?;
    let mut layers = Vec::new();
    for layer in manifest.layers() {
        if !staging.has_blob(layer.digest()) {
            let mut r = from
                .open_blob(layer.digest(), Some(layer.size()))
                .map_err(base_err)?;
            let mut w = staging.blob_writer().map_err(base_err)?;
            io::copy(&mut r, &mut w).map_err(|e| {
                base_err(format!(
                    "{}: layer {}: {}",
                    base.reference,
                    layer.digest(),
                    r.explain(e, &from.blob_path(layer.digest()))
                ))
            })?;
            w.finish(Some(layer.digest())).map_err(base_err)?;
        }
        let mut d = layer.clone();
        d.set_media_type(oci_layer_type(layer.media_type()));
        layers.push(d);
    }
    let added = write_dir(staging, artifacts, Compression::None, epoch).map_err(base_err)?;
    layers.push(added.descriptor.clone());

    let mut config: serde_json::Value = from
        .read_json(manifest.config().digest())
        .map_err(|e| base_err(format!("{}: config: {e}", base.reference)))?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| base_err(format!("{}: the config is not an object", base.reference)))?;
    obj.insert("created".into(), rfc3339(epoch).into());
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    match rootfs.get_mut("diff_ids").and_then(|v| v.as_array_mut()) {
        Some(ids) => ids.push(added.diff_id.to_string().into()),
        None => {
            return Err(base_err(format!(
                "{}: config without rootfs.diff_ids",
                base.reference
            )));
        }
    }
    if let Some(history) = obj.get_mut("history").and_then(|h| h.as_array_mut()) {
        history.push(serde_json::json!({
            "created": rfc3339(epoch),
            "created_by": "composer image-installer",
            "comment": "installer artifacts: kernel and initramfs with system extensions",
        }));
    }
    let config_desc = staging
        .write_json(MediaType::ImageConfig, &config)
        .map_err(base_err)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layers)
        .build()
        .map_err(base_err)?;
    staging
        .write_json(MediaType::ImageManifest, &manifest)
        .map_err(base_err)
}
