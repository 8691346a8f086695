//! The tag a target's image will carry, told from the definitions before
//! anything is built (`composer build --skip-existing` asks the registry
//! for it). `pack` chooses tags from the built tree; this module knows the
//! cases where the definitions already fix that choice:
//!
//! | image            | tag `pack` gives the built tree                     | known before building when                              |
//! |------------------|-----------------------------------------------------|---------------------------------------------------------|
//! | KMM kmod image   | the one release directory under `usr/lib/modules`   | the release is given (`--kernel-release`)                |
//! | system extension | `manifest.yaml`'s `metadata.version` (`latest` when empty) | the output's `manifest.yaml` is the package's own: the last `finalize` that writes `/manifest.yaml` (`to: /` or `to: /manifest.yaml`) copies `/pkg/manifest.yaml`, the rendered `manifest.yaml.tmpl` (or a plain `manifest.yaml`), which no step can change (`/pkg` is read-only) |
//! | base installer   | the package's `VERSION`                             | never: only the output tells that a stage is an installer |
//!
//! Invariant: a tag is returned only when the built image cannot carry
//! another one; otherwise the error says why it cannot be known. The
//! build checks each told tag against the packed image (`cli::existing`),
//! so a divergence from `pack` is an error, never a silent skip.

use std::path::Path;

use crate::defs::Package;

/// The file `pack` reads an extension's version from, at the output's root.
const MANIFEST: &str = "manifest.yaml";

/// Why a tag cannot be told before building.
#[derive(Debug, thiserror::Error)]
#[error("{target}: {reason}")]
pub struct Unknown {
    pub target: String,
    pub reason: String,
}

/// The tag of `pkg`'s system extension image: its shipped manifest's
/// version, `latest` when the version is empty (as `pack` does).
pub fn extension_tag(pkg: &Package) -> Result<String, Unknown> {
    let target = pkg.pkg.name.value.clone();
    let unknown = |reason: String| Unknown {
        target: target.clone(),
        reason,
    };
    let writes_manifest = |to: &str| {
        let to = to.trim_end_matches('/');
        to.is_empty() || to == "/manifest.yaml"
    };
    let last = pkg
        .pkg
        .finalize
        .iter()
        .rev()
        .find(|f| writes_manifest(&f.to));
    let ships_its_own = last.is_some_and(|f| f.from.trim_end_matches('/') == "/pkg/manifest.yaml");
    if !ships_its_own {
        return Err(unknown(
            "what image it becomes and its tag are known only from its built output (a system extension's tag is known in advance when the last `finalize` writing /manifest.yaml is `from: /pkg/manifest.yaml`, its rendered manifest.yaml.tmpl)".into(),
        ));
    }
    let text = match pkg.templates.iter().find(|(p, _)| p == Path::new(MANIFEST)) {
        Some((_, text)) => text.clone(),
        None => plain_manifest(&pkg.pkg.dir).map_err(unknown)?,
    };
    let version = manifest_version(&text).map_err(|e| {
        unknown(format!(
            "{}: {e}",
            crate::diag::display_path(&pkg.pkg.dir.join(MANIFEST)).display()
        ))
    })?;
    Ok(if version.is_empty() {
        "latest".to_string()
    } else {
        version
    })
}

/// A `manifest.yaml` kept as a plain file in the package directory.
fn plain_manifest(dir: &Path) -> Result<String, String> {
    let path = dir.join(MANIFEST);
    let shown = crate::diag::display_path(&path);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", shown.display()))
        }
        _ => Err(format!(
            "its finalize ships /pkg/manifest.yaml, but {} has neither manifest.yaml.tmpl nor a plain manifest.yaml",
            crate::diag::display_path(dir).display()
        )),
    }
}

/// `metadata.version` of an extension manifest, trimmed; empty when absent.
fn manifest_version(text: &str) -> Result<String, String> {
    use saphyr::LoadableYamlNode;
    let docs = saphyr::Yaml::load_from_str(text).map_err(|e| e.to_string())?;
    let metadata = docs.first().and_then(|d| d.as_mapping_get("metadata"));
    Ok(super::extension::metadata_info(metadata).version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_version_reads_metadata_version() {
        let text = "version: v1alpha1\nmetadata:\n  name: x\n  version: \"1.2.3\"\n";
        assert_eq!(manifest_version(text).unwrap(), "1.2.3");
        assert_eq!(manifest_version("version: v1alpha1\n").unwrap(), "");
        assert!(manifest_version("metadata: [\n").is_err());
    }
}
