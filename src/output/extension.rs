//! Talos system extension images: one layer holding `/manifest.yaml` and
//! `/rootfs/...` exactly as the stage left them (Talos flattens the image
//! and expects nothing else at its root), with `org.opencontainers.image.*`
//! labels and the tag from the manifest's version (the package's
//! `VERSION` variable rendered through `manifest.yaml.tmpl`).
//!
//! This module reads the manifest and makes the labels; `output::pack`
//! validates the tree and packs it, so an extension that breaks a rule
//! never becomes an image.

use std::collections::BTreeMap;
use std::path::Path;

use super::OutputError;
use super::image::rfc3339;

/// True when `tree` looks like an extension (a `manifest.yaml` file and a
/// `rootfs/` directory at its root).
pub fn is_extension(tree: &Path) -> bool {
    tree.join("manifest.yaml").is_file() && tree.join("rootfs").is_dir()
}

/// The fields of an extension manifest composer reads (name, version,
/// description), for labels and the tag.
#[derive(Clone, Debug, Default)]
pub struct ManifestInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub author: String,
}

/// Reads `manifest.yaml`'s metadata.
pub fn manifest_info(tree: &Path) -> Result<ManifestInfo, OutputError> {
    let path = tree.join("manifest.yaml");
    let text = std::fs::read_to_string(&path).map_err(|source| OutputError::Io {
        path: path.clone(),
        source,
    })?;
    use saphyr::LoadableYamlNode;
    let docs = saphyr::Yaml::load_from_str(&text).map_err(|e| OutputError::Input {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(metadata_info(
        docs.first().and_then(|d| d.as_mapping_get("metadata")),
    ))
}

/// The fields composer reads from a manifest's parsed `metadata` mapping
/// (empty when absent).
pub fn metadata_info(metadata: Option<&saphyr::Yaml<'_>>) -> ManifestInfo {
    let get = |key: &str| -> String {
        metadata
            .and_then(|m| m.as_mapping_get(key))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    ManifestInfo {
        name: get("name"),
        version: get("version"),
        description: get("description"),
        author: get("author"),
    }
}

/// The labels of an image: the Pkgfile's labels, then the standard ones.
pub fn labels(
    base: &BTreeMap<String, String>,
    title: &str,
    version: &str,
    description: &str,
    epoch: u64,
) -> BTreeMap<String, String> {
    let mut l = base.clone();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            l.insert(format!("org.opencontainers.image.{k}"), v.to_string());
        }
    };
    put("title", title);
    put("version", version);
    put("description", description);
    put("created", &rfc3339(epoch));
    l
}
