//! Image objects around layers: the image configuration, the manifest and
//! the multi-platform index, written into an OCI layout with oci-spec's
//! types (serialised canonically by the layout, so digests are stable).
//!
//! Invariants:
//! - `created` is the epoch given (`SOURCE_DATE_EPOCH`), never the clock.
//! - No history entries with host details; the config names only the
//!   platform, the labels and the layers' diff IDs.
//! - The manifest carries the labels as annotations too, so registries
//!   and `skopeo inspect --raw` show them without fetching the config.

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};

use crate::defs::Platform;
use crate::oci::layer::Layer;
use crate::oci::layout::{Layout, LayoutError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("building the image {what}: {message}")]
    Build { what: &'static str, message: String },
}

fn build_err(what: &'static str) -> impl Fn(oci_spec::OciSpecError) -> ImageError {
    move |e| ImageError::Build {
        what,
        message: e.to_string(),
    }
}

/// What an image is made of besides its layers.
#[derive(Clone, Debug, Default)]
pub struct ImageMeta {
    /// `org.opencontainers.image.*` and other labels.
    pub labels: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// RFC 3339 (UTC, seconds) of a Unix time.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn oci_platform(p: Platform) -> (Os, Arch) {
    match p {
        Platform::LinuxAmd64 => (Os::Linux, Arch::Amd64),
        Platform::LinuxArm64 => (Os::Linux, Arch::ARM64),
    }
}

/// Writes the config and the manifest of a single-platform image; returns
/// the manifest's descriptor (with its platform set, for an index).
pub fn write_image(
    layout: &Layout,
    platform: Platform,
    layers: &[Layer],
    meta: &ImageMeta,
) -> Result<Descriptor, ImageError> {
    let (os, arch) = oci_platform(platform);
    let labels: HashMap<String, String> = meta.labels.clone().into_iter().collect();
    let config = ImageConfigurationBuilder::default()
        .created(rfc3339(meta.created))
        .architecture(arch.clone())
        .os(os.clone())
        .config(
            ConfigBuilder::default()
                .labels(labels.clone())
                .build()
                .map_err(build_err("config"))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(
                    layers
                        .iter()
                        .map(|l| l.diff_id.to_string())
                        .collect::<Vec<_>>(),
                )
                .build()
                .map_err(build_err("rootfs"))?,
        )
        .build()
        .map_err(build_err("configuration"))?;
    let config_desc = layout.write_json(MediaType::ImageConfig, &config)?;
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(
            layers
                .iter()
                .map(|l| l.descriptor.clone())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(build_err("manifest"))?;
    if !labels.is_empty() {
        manifest.set_annotations(Some(labels));
    }
    let mut desc = layout.write_json(MediaType::ImageManifest, &manifest)?;
    desc.set_platform(Some(
        PlatformBuilder::default()
            .os(os)
            .architecture(arch)
            .build()
            .map_err(build_err("platform"))?,
    ));
    Ok(desc)
}

/// Writes an index over per-platform manifests (descriptors from
/// [`write_image`], in the order given).
pub fn write_index(
    layout: &Layout,
    manifests: &[Descriptor],
    meta: &ImageMeta,
) -> Result<Descriptor, ImageError> {
    let mut index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests.to_vec())
        .build()
        .map_err(build_err("index"))?;
    if !meta.labels.is_empty() {
        index.set_annotations(Some(meta.labels.clone().into_iter().collect()));
    }
    Ok(layout.write_json(MediaType::ImageIndex, &index)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
