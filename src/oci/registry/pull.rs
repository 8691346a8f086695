//! Pull: a manifest or index from a registry into a layout.
//!
//! The manifest is fetched with `Accept` for OCI manifests and indexes and
//! Docker schema 2 manifests and manifest lists (structurally the same
//! documents). What is verified before anything is named in the layout:
//! - a manifest's bytes against the digest asked for (pull by digest, or
//!   an index entry) and against `Docker-Content-Digest` when sent;
//! - every blob against its descriptor's digest and size, while it is
//!   written ([`BlobWriter::finish`] renames it into place only when the
//!   digest matches; a failed blob leaves nothing behind).
//!
//! With a platform, an index yields that platform's manifest (the error
//! lists the platforms it has); a single manifest's config must name that
//! platform (checked before any layer is downloaded). Without one, the
//! whole index is stored with every child. Storage order: blobs, then the manifest, then the index, then the tag.
//!
//! Retry policy: manifest requests and blob requests are retried on
//! transport failures and 408/429/5xx answers (bounded, backoff); a blob
//! download cut midway continues with `Range: bytes=<n>-` when the registry
//! answers 206, else starts over. A digest mismatch is never retried.

use std::io::{Read, Write};

use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Platform,
};
use sha2::{Digest as _, Sha256};
use ureq::http::Method;

use super::client::{Client, header};
use super::{Kind, MAX_DEPTH, PullEvent, RegistryError, RegistryOptions, kind_of};
use crate::oci::layout::{BlobWriter, Layout, LayoutError, sha256_digest};
use crate::oci::reference::RegistryRef;

/// Manifests larger than this are refused (registries cap them at 4 MiB).
pub(super) const MANIFEST_LIMIT: u64 = 16 << 20;

pub(super) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Pulls `src` (by tag or digest) into `dest` and tags it `tag` there.
/// `platform` (`os/arch[/variant]`) picks one manifest of an index.
/// Returns the descriptor that `tag` names.
pub fn pull(
    src: &RegistryRef,
    platform: Option<&str>,
    dest: &Layout,
    tag: &str,
    opts: &RegistryOptions,
    progress: &dyn Fn(PullEvent),
) -> Result<Descriptor, RegistryError> {
    let want = platform.map(PlatformSpec::parse).transpose()?;
    let requested: Option<Digest> = match &src.digest {
        Some(d) => Some(d.parse().map_err(|_| RegistryError::Manifest {
            reference: src.to_string(),
            message: format!("`{d}` is not a digest"),
        })?),
        None => None,
    };
    let mut p = Puller {
        client: Client::connect(src, opts, false)?,
        dest,
        progress,
    };
    let top = p.fetch_manifest(src.manifest_reference(), requested.as_ref())?;
    let desc = match (top.kind, &want) {
        (Kind::Index, Some(w)) => {
            let index: ImageIndex = p.parse(&top)?;
            let child = select(&index, w).ok_or_else(|| RegistryError::NoPlatform {
                reference: src.to_string(),
                platform: w.to_string(),
                available: available(&index),
            })?;
            let fetched = p.fetch_manifest(child.digest().as_ref(), Some(child.digest()))?;
            p.check_size(&fetched, child)?;
            p.store(&fetched, None, 1)?;
            let mut d = child.clone();
            d.set_media_type(MediaType::from(fetched.media_type.as_str()));
            d
        }
        _ => p.store(&top, want.as_ref(), 0)?,
    };
    dest.set_tag(&desc, tag)
        .map_err(|source| RegistryError::Layout {
            context: format!("tagging {} as {tag}", desc.digest()),
            source,
        })?;
    Ok(desc)
}

/// `os/arch[/variant]`, normalised (`x86_64` → `amd64`, `aarch64` → `arm64`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct PlatformSpec {
    os: String,
    arch: String,
    variant: Option<String>,
}

impl PlatformSpec {
    fn parse(s: &str) -> Result<PlatformSpec, RegistryError> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(RegistryError::InvalidPlatform(s.to_string()));
        }
        Ok(PlatformSpec {
            os: parts[0].to_ascii_lowercase(),
            arch: normalise_arch(parts[1]),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }

    fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        self.os == os.to_ascii_lowercase()
            && self.arch == normalise_arch(arch)
            && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

fn normalise_arch(a: &str) -> String {
    match a.to_ascii_lowercase().as_str() {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

fn platform_text(p: &Platform) -> String {
    let mut s = format!("{}/{}", p.os(), p.architecture());
    if let Some(v) = p.variant() {
        s.push_str(&format!("/{v}"));
    }
    s
}

/// The first index entry for `want` (without a variant, any variant).
fn select<'i>(index: &'i ImageIndex, want: &PlatformSpec) -> Option<&'i Descriptor> {
    index.manifests().iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            want.matches(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            )
        })
    })
}

fn available(index: &ImageIndex) -> String {
    let list: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(platform_text)
        .filter(|p| p != "unknown/unknown")
        .collect();
    if list.is_empty() {
        "none declared".into()
    } else {
        list.join(", ")
    }
}

/// A manifest or index as received and verified.
struct Fetched {
    bytes: Vec<u8>,
    digest: Digest,
    media_type: String,
    kind: Kind,
}

struct Puller<'a, 'o> {
    client: Client<'o>,
    dest: &'a Layout,
    progress: &'a dyn Fn(PullEvent),
}

impl Puller<'_, '_> {
    fn parse<T: serde::de::DeserializeOwned>(&self, f: &Fetched) -> Result<T, RegistryError> {
        serde_json::from_slice(&f.bytes).map_err(|e| RegistryError::Manifest {
            reference: self.client.reference().to_string(),
            message: format!("{} {}: {e}", f.media_type, f.digest),
        })
    }

    fn check_size(&self, f: &Fetched, desc: &Descriptor) -> Result<(), RegistryError> {
        if f.bytes.len() as u64 != desc.size() {
            return Err(RegistryError::Manifest {
                reference: self.client.reference().to_string(),
                message: format!(
                    "manifest {} has {} bytes, its descriptor says {}",
                    f.digest,
                    f.bytes.len(),
                    desc.size()
                ),
            });
        }
        Ok(())
    }

    /// `GET /v2/<repo>/manifests/<reference>`, verified (see module doc).
    fn fetch_manifest(
        &mut self,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Fetched, RegistryError> {
        let at = self.client.reference().to_string();
        let url = self.client.url(&format!("/manifests/{reference}"));
        let op = format!("GET manifest {reference}");
        let progress = self.progress;
        let mut resp = self.client.send_retrying(
            Method::GET,
            &url,
            &[("accept", ACCEPT)],
            None,
            &op,
            &|attempt, e| {
                progress(PullEvent::Retry {
                    digest: expected.cloned(),
                    offset: 0,
                    attempt,
                    reason: e.to_string(),
                })
            },
        )?;
        if resp.status().as_u16() != 200 {
            return Err(self.client.fail(resp, &op));
        }
        let content_type = header(&resp, "content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let announced = header(&resp, "docker-content-digest").map(str::to_string);
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MANIFEST_LIMIT)
            .read_to_vec()
            .map_err(|e| RegistryError::Transport {
                reference: at.clone(),
                operation: op.clone(),
                message: e.to_string(),
            })?;
        let digest = sha256_digest(&hex::encode(Sha256::digest(&bytes)));
        let mismatch = |what: &str, expected: String| RegistryError::DigestMismatch {
            reference: at.clone(),
            what: what.to_string(),
            expected,
            actual: digest.to_string(),
        };
        if let Some(e) = expected
            && *e != digest
        {
            return Err(mismatch("manifest", e.to_string()));
        }
        if let Some(a) = announced.filter(|a| a.starts_with("sha256:"))
            && a != digest.to_string()
        {
            return Err(mismatch("manifest (Docker-Content-Digest)", a));
        }
        let media_type =
            media_type_of(&content_type, &bytes).map_err(|message| RegistryError::Manifest {
                reference: at.clone(),
                message: format!("{reference}: {message}"),
            })?;
        let kind = kind_of(&media_type).ok_or_else(|| RegistryError::Manifest {
            reference: at.clone(),
            message: format!(
                "{reference} has media type {media_type}, not an image manifest or index"
            ),
        })?;
        (self.progress)(PullEvent::Manifest {
            digest: digest.clone(),
            media_type: MediaType::from(media_type.as_str()),
        });
        Ok(Fetched {
            bytes,
            digest,
            media_type,
            kind,
        })
    }

    /// Stores `f` after everything it references; returns its descriptor.
    fn store(
        &mut self,
        f: &Fetched,
        want: Option<&PlatformSpec>,
        depth: u32,
    ) -> Result<Descriptor, RegistryError> {
        if depth > MAX_DEPTH {
            return Err(RegistryError::Manifest {
                reference: self.client.reference().to_string(),
                message: format!("indexes nested deeper than {MAX_DEPTH} levels"),
            });
        }
        match f.kind {
            Kind::Index => {
                let index: ImageIndex = self.parse(f)?;
                for child in index.manifests() {
                    let fetched =
                        self.fetch_manifest(child.digest().as_ref(), Some(child.digest()))?;
                    self.check_size(&fetched, child)?;
                    self.store(&fetched, None, depth + 1)?;
                }
            }
            Kind::Manifest => {
                let manifest: ImageManifest = self.parse(f)?;
                self.blob(manifest.config())?;
                if let Some(w) = want {
                    self.check_platform(manifest.config(), w)?;
                }
                for layer in manifest.layers() {
                    if layer.urls().as_ref().is_some_and(|u| !u.is_empty())
                        && ["foreign", "nondistributable"]
                            .iter()
                            .any(|k| layer.media_type().to_string().contains(k))
                    {
                        continue; // a foreign layer lives at its URLs
                    }
                    self.blob(layer)?;
                }
            }
        }
        let (digest, size) =
            self.dest
                .write_blob(&f.bytes)
                .map_err(|source| RegistryError::Layout {
                    context: format!("storing manifest {}", f.digest),
                    source,
                })?;
        Ok(Descriptor::new(
            MediaType::from(f.media_type.as_str()),
            size,
            digest,
        ))
    }

    /// A single-platform image must be for the platform asked for.
    fn check_platform(
        &self,
        config: &Descriptor,
        want: &PlatformSpec,
    ) -> Result<(), RegistryError> {
        let Ok(c) = self.dest.read_json::<ImageConfiguration>(config.digest()) else {
            return Ok(()); // not an image config (an artifact): nothing to check
        };
        let (os, arch) = (c.os().to_string(), c.architecture().to_string());
        if want.matches(&os, &arch, c.variant().as_deref()) {
            return Ok(());
        }
        let mut have = format!("{os}/{arch}");
        if let Some(v) = c.variant() {
            have.push_str(&format!("/{v}"));
        }
        Err(RegistryError::NoPlatform {
            reference: self.client.reference().to_string(),
            platform: want.to_string(),
            available: format!("{have} (a single-platform image)"),
        })
    }

    /// Downloads one blob, verified, unless the layout has it.
    fn blob(&mut self, desc: &Descriptor) -> Result<(), RegistryError> {
        let digest = desc.digest().clone();
        let size = desc.size();
        if self.dest.has_blob(&digest) {
            (self.progress)(PullEvent::BlobPresent { digest, size });
            return Ok(());
        }
        let at = self.client.reference().to_string();
        let layout_err = |context: String| move |source| RegistryError::Layout { context, source };
        let mut writer = self
            .dest
            .blob_writer()
            .map_err(layout_err(format!("storing blob {digest}")))?;
        (self.progress)(PullEvent::BlobStarted {
            digest: digest.clone(),
            size,
        });
        let url = self.client.url(&format!("/blobs/{digest}"));
        let op = format!("GET blob {digest}");
        let retries = self.client.opts.retries;
        let mut failures = 0u32;
        loop {
            let have = writer.size();
            let range = format!("bytes={have}-");
            let headers: Vec<(&str, &str)> = if have > 0 {
                vec![("range", range.as_str())]
            } else {
                vec![]
            };
            let err = match self.client.send(Method::GET, &url, &headers, None, &op) {
                Ok(resp) => match resp.status().as_u16() {
                    status @ (200 | 206) => {
                        let start = header(&resp, "content-range").and_then(range_start);
                        let continues = status == 206 && start == Some(have);
                        if have > 0 && !continues {
                            // The whole blob, or a range we did not ask for.
                            writer = self
                                .dest
                                .blob_writer()
                                .map_err(layout_err(format!("storing blob {digest}")))?;
                        }
                        if status == 206 && !continues {
                            RegistryError::Transport {
                                reference: at.clone(),
                                operation: op.clone(),
                                message: format!(
                                    "asked for bytes from {have}, got a range from {start:?}"
                                ),
                            }
                        } else {
                            match self.copy(
                                resp.into_body().into_reader(),
                                &mut writer,
                                &digest,
                                size,
                            ) {
                                Ok(()) => break,
                                Err(e) => e,
                            }
                        }
                    }
                    _ => self.client.fail(resp, &op),
                },
                Err(e) => e,
            };
            if !err.is_retryable() {
                return Err(err);
            }
            failures += 1;
            if failures > retries {
                return Err(RegistryError::RetriesExhausted {
                    operation: format!("{at}: {op}"),
                    attempts: failures,
                    last: Box::new(err),
                });
            }
            (self.progress)(PullEvent::Retry {
                digest: Some(digest.clone()),
                offset: writer.size(),
                attempt: failures,
                reason: err.to_string(),
            });
            std::thread::sleep(self.client.backoff(failures));
        }
        if writer.size() != size {
            return Err(RegistryError::Layout {
                context: format!("{at}: GET blob {digest}"),
                source: LayoutError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: size,
                    actual: writer.size(),
                },
            });
        }
        writer.finish(Some(&digest)).map_err(|e| match e {
            LayoutError::DigestMismatch { expected, actual } => RegistryError::DigestMismatch {
                reference: at.clone(),
                what: "blob".into(),
                expected,
                actual,
            },
            source => RegistryError::Layout {
                context: format!("storing blob {digest}"),
                source,
            },
        })?;
        (self.progress)(PullEvent::BlobDone { digest, size });
        Ok(())
    }

    /// Copies a response body into `writer`, never past `size` bytes.
    fn copy(
        &self,
        body: impl Read,
        writer: &mut BlobWriter,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        let at = self.client.reference();
        let mut body = body.take(size.saturating_sub(writer.size()) + 1);
        let mut buf = vec![0u8; 1 << 16];
        let mut last_report = writer.size();
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(RegistryError::Transport {
                        reference: at.to_string(),
                        operation: format!("GET blob {digest}"),
                        message: e.to_string(),
                    });
                }
            };
            if writer.size() + n as u64 > size {
                return Err(RegistryError::Layout {
                    context: format!("{at}: GET blob {digest}"),
                    source: LayoutError::SizeMismatch {
                        digest: digest.to_string(),
                        expected: size,
                        actual: writer.size() + n as u64,
                    },
                });
            }
            writer
                .write_all(&buf[..n])
                .map_err(|source| RegistryError::Layout {
                    context: format!("storing blob {digest}"),
                    source: LayoutError::Io {
                        path: self.dest.root().to_path_buf(),
                        source,
                    },
                })?;
            if writer.size() - last_report >= 4 << 20 || writer.size() == size {
                last_report = writer.size();
                (self.progress)(PullEvent::BlobProgress {
                    digest: digest.clone(),
                    received: writer.size(),
                    size,
                });
            }
        }
    }
}

/// The first byte of `Content-Range: bytes <start>-<end>/<size>`.
fn range_start(value: &str) -> Option<u64> {
    let v = value.trim();
    let v = v.strip_prefix("bytes").unwrap_or(v).trim_start();
    v.split('-').next()?.trim().parse().ok()
}

/// The media type of a manifest: the `Content-Type`, unless generic, else
/// the document's `mediaType`, else its shape. Schema 1 is refused.
fn media_type_of(content_type: &str, bytes: &[u8]) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1)
        || content_type.starts_with("application/vnd.docker.distribution.manifest.v1")
    {
        return Err("Docker schema 1 manifests are not supported; push the image again with a current client".into());
    }
    let own = v.get("mediaType").and_then(|m| m.as_str());
    let generic = matches!(
        content_type,
        "" | "application/json" | "text/plain" | "application/octet-stream"
    );
    Ok(match (generic, own) {
        (false, _) => content_type.to_string(),
        (true, Some(m)) => m.to_string(),
        (true, None) if v.get("manifests").is_some() => MediaType::ImageIndex.to_string(),
        (true, None) => MediaType::ImageManifest.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST};
    use super::*;

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut p = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    p["variant"] = serde_json::json!(v);
                }
                serde_json::json!({
                    "mediaType": DOCKER_MANIFEST,
                    "size": 100,
                    "digest": format!("sha256:{}", format!("{i}").repeat(64)),
                    "platform": p,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": manifests,
        }))
        .unwrap()
    }

    #[test]
    fn platform_selection_matches_os_arch_and_variant() {
        let idx = index(&[
            ("linux", "amd64", None),
            ("linux", "arm", Some("v7")),
            ("linux", "arm64", Some("v8")),
        ]);
        let pick = |s: &str| {
            select(&idx, &PlatformSpec::parse(s).unwrap()).map(|d| d.digest().to_string())
        };
        assert!(pick("linux/x86_64").unwrap().ends_with(&"0".repeat(64)));
        assert!(pick("linux/arm64").unwrap().ends_with(&"2".repeat(64)));
        assert!(pick("linux/arm/v7").unwrap().ends_with(&"1".repeat(64)));
        assert!(pick("linux/arm/v6").is_none());
        assert_eq!(available(&idx), "linux/amd64, linux/arm/v7, linux/arm64/v8");
        assert!(PlatformSpec::parse("linux").is_err());
        assert!(PlatformSpec::parse("linux//v7").is_err());
    }

    #[test]
    fn content_range_start_is_read() {
        assert_eq!(range_start("bytes 1048576-5242879/5242880"), Some(1 << 20));
        assert_eq!(range_start("bytes */100"), None);
    }

    #[test]
    fn manifest_media_type_comes_from_header_then_document() {
        let oci =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert_eq!(
            media_type_of(DOCKER_MANIFEST, oci).unwrap(),
            DOCKER_MANIFEST
        );
        assert_eq!(
            media_type_of("application/json", oci).unwrap(),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            media_type_of("", br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            "application/vnd.oci.image.index.v1+json"
        );
        let e =
            media_type_of("application/json", br#"{"schemaVersion":1,"fsLayers":[]}"#).unwrap_err();
        assert!(e.contains("schema 1"), "{e}");
    }
}
