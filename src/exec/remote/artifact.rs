//! A cache entry as an OCI artifact, and back.
//!
//! One stage's entry is one image manifest (`artifactType`
//! [`STAGE_ARTIFACT`]) whose config blob is the entry's `meta.json` (media
//! type [`META_MEDIA_TYPE`]) and whose only layer is the entry's `out/`
//! tree as a deterministic zstd tar (`oci::layer`). Annotations name the
//! stage, its key and its signing session, so a registry's listing reads
//! without downloading anything. A signing session is one image index
//! ([`SESSION_ARTIFACT`]) listing the manifests of all its stages, each
//! with its key annotated: the unit a reader takes whole or not at all.
//!
//! Invariants:
//! - What is read back lands in the cache only when the tree unpacked
//!   from the layer has the digest the entry recorded (`output_digest`):
//!   the layer's bytes and the tree are checked while written
//!   (`remote::unpack`); anything else is an error and nothing is
//!   committed.
//! - The mode of `out/` itself (part of the entry's digest; a layer has no
//!   entry for its root) travels as an annotation and is set before the
//!   check, so machines with different umasks agree.
//! - Nothing but `meta.json` and `out/` travels: no session key exists in
//!   either (the cache never holds one).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageIndexBuilder, ImageManifest, ImageManifestBuilder,
    MediaType,
};

use super::RemoteError;
use super::unpack::unpack_layer;
use crate::exec::cache::{Cache, Meta, Pending};
use crate::oci::layer::{Compression, write_dir};
use crate::oci::layout::Layout;

/// The `artifactType` of a stage entry's manifest.
pub const STAGE_ARTIFACT: &str = "application/vnd.composer.stage.v1";
/// The media type of its config blob (the entry's `meta.json`).
pub const META_MEDIA_TYPE: &str = "application/vnd.composer.stage.meta.v1+json";
/// The `artifactType` of a signing session's index.
pub const SESSION_ARTIFACT: &str = "application/vnd.composer.session.v1";
/// Annotations on manifests and index entries.
pub const KEY_ANNOTATION: &str = "dev.composer.stage.key";
pub const STAGE_ANNOTATION: &str = "dev.composer.stage.name";
pub const SESSION_ANNOTATION: &str = "dev.composer.session";
/// The mode of the entry's `out/` directory (octal).
pub const ROOT_MODE_ANNOTATION: &str = "dev.composer.stage.root-mode";

/// The tag a stage's entry is stored under: its key.
pub fn stage_tag(key: &str) -> String {
    key.to_string()
}

/// The tag a signing session's index is stored under.
pub fn session_tag(session: &str) -> String {
    let clean: String = session
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(100)
        .collect();
    format!("session-{clean}")
}

fn invalid(message: impl std::fmt::Display) -> RemoteError {
    RemoteError::Invalid(message.to_string())
}

/// Writes `meta` and the tree `out` as a stage artifact into `layout`;
/// returns its manifest's descriptor (annotated with the stage's key).
pub fn write_stage(layout: &Layout, meta: &Meta, out: &Path) -> Result<Descriptor, RemoteError> {
    let config_bytes = serde_json::to_vec(meta).map_err(invalid)?;
    let (config_digest, config_size) = layout.write_blob(&config_bytes)?;
    let config = Descriptor::new(
        MediaType::Other(META_MEDIA_TYPE.into()),
        config_size,
        config_digest,
    );
    let layer = write_dir(layout, out, Compression::Zstd, 0)?;
    let mut annotations = annotations(meta);
    // A layer has no entry for its root; the root's mode is in the digest.
    let root = std::fs::metadata(out).map_err(|e| invalid(format!("{}: {e}", out.display())))?;
    annotations.insert(
        ROOT_MODE_ANNOTATION.to_string(),
        format!("{:o}", root.permissions().mode() & 0o7777),
    );
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(STAGE_ARTIFACT.into()))
        .config(config)
        .layers(vec![layer.descriptor])
        .annotations(annotations.clone())
        .build()
        .map_err(invalid)?;
    let mut desc = layout.write_json(MediaType::ImageManifest, &manifest)?;
    desc.set_annotations(Some(annotations));
    Ok(desc)
}

fn annotations(meta: &Meta) -> std::collections::HashMap<String, String> {
    let mut a = std::collections::HashMap::new();
    a.insert(KEY_ANNOTATION.to_string(), meta.key.clone());
    a.insert(STAGE_ANNOTATION.to_string(), meta.stage.clone());
    if let Some(s) = &meta.session {
        a.insert(SESSION_ANNOTATION.to_string(), s.clone());
    }
    a
}

/// Writes a signing session's index over its stages' manifests.
pub fn write_session(
    layout: &Layout,
    session: &str,
    members: &[Descriptor],
) -> Result<Descriptor, RemoteError> {
    let mut annotations = std::collections::HashMap::new();
    annotations.insert(SESSION_ANNOTATION.to_string(), session.to_string());
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .artifact_type(MediaType::Other(SESSION_ARTIFACT.into()))
        .manifests(members.to_vec())
        .annotations(annotations)
        .build()
        .map_err(invalid)?;
    Ok(layout.write_json(MediaType::ImageIndex, &index)?)
}

/// Reads the stage artifact `manifest` of `layout` (its blobs already
/// there) into a pending cache entry for `key`: the meta it carries (with
/// the tree's size) and the unpacked tree, checked against the recorded
/// digest while it is written. Also returns the bytes of its blobs.
pub fn read_stage(
    layout: &Layout,
    manifest: &Descriptor,
    key: &str,
    cache: &Cache,
) -> Result<(Pending, Meta, u64), RemoteError> {
    let m: ImageManifest = layout.read_json(manifest.digest())?;
    if m.config().media_type().to_string() != META_MEDIA_TYPE || m.layers().len() != 1 {
        return Err(invalid("not a composer stage artifact"));
    }
    let meta: Meta = serde_json::from_slice(&layout.read_blob(m.config().digest())?)
        .map_err(|e| invalid(format!("meta.json: {e}")))?;
    if meta.key != key {
        return Err(invalid(format!(
            "the entry is for key {}, not {key}",
            meta.key
        )));
    }
    let root_mode = m
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ROOT_MODE_ANNOTATION))
        .and_then(|m| u32::from_str_radix(m, 8).ok());
    let layer = &m.layers()[0];
    let pending = cache.begin()?;
    match unpack_layer(layout, layer, &pending.out(), root_mode) {
        Ok(tree) if tree.digest == meta.output_digest => {
            let bytes = m.config().size() + layer.size();
            let meta = Meta {
                size: tree.size,
                ..meta
            };
            Ok((pending, meta, bytes))
        }
        Ok(tree) => {
            cache.discard(pending)?;
            Err(RemoteError::Damaged(format!(
                "its files have digest {}, the entry records {}",
                tree.digest, meta.output_digest
            )))
        }
        Err(e) => {
            cache.discard(pending)?;
            Err(RemoteError::Damaged(e))
        }
    }
}

/// A descriptor for a manifest known by digest and size only.
pub fn manifest_descriptor(digest: &str, size: u64) -> Result<Descriptor, RemoteError> {
    DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(digest.parse::<oci_spec::image::Digest>().map_err(invalid)?)
        .size(size)
        .build()
        .map_err(invalid)
}
