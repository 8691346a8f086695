//! Push: a manifest or index from a layout to a registry.
//!
//! Order: for a manifest, its config and layers, then the manifest; for an
//! index, each child (recursively) by digest, then the index. The
//! top-level document is PUT under the destination tag (or its digest)
//! last. Manifests are sent as the exact bytes of the layout's blob with
//! their descriptor's media type as `Content-Type`.
//!
//! A blob is sent only when `HEAD /v2/<repo>/blobs/<digest>` says the
//! registry lacks it. Upload: `POST .../blobs/uploads/`, then one `PATCH`
//! per chunk (`Content-Range: start-end`, [`RegistryOptions::chunk_size`]
//! bytes), then `PUT <location>?digest=<digest>`, always to the newest
//! `Location` the registry gave. The registry checks the digest when the
//! upload is committed.
//!
//! Retry policy for an upload: a transport failure or 408/429/5xx answer
//! waits (exponential backoff), asks `GET <location>` for the committed
//! `Range` and continues from there (after a failed commit, a `HEAD` first
//! checks whether the blob landed). An upload session the registry no
//! longer knows, or that it refuses (`BLOB_UPLOAD_UNKNOWN`,
//! `BLOB_UPLOAD_INVALID`, 416, a digest mismatch after a resume) restarts
//! the blob from byte 0. Both are bounded by [`RegistryOptions::retries`]:
//! consecutive failures without progress, and restarts per blob.
//! Registries whose upload locations carry the upload's state (like
//! docker-registry's `_state`) refuse a session once a `PATCH` broke, or
//! once its answer was lost: there a resume is a restart.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};
use ureq::http::Method;

use super::client::{Client, encode, header};
use super::{Kind, MAX_DEPTH, PushEvent, Pushed, RegistryError, RegistryOptions, kind_of};
use crate::oci::layout::{Layout, LayoutError};
use crate::oci::reference::RegistryRef;

/// Pushes the image named `tag_or_digest` in `layout` (a tag, a
/// `sha256:` digest, or the only image when `None`) to `dest`, under
/// `dest.tag` (or by digest when `dest` has no tag).
pub fn push(
    layout: &Layout,
    tag_or_digest: Option<&str>,
    dest: &RegistryRef,
    opts: &RegistryOptions,
    progress: &dyn Fn(PushEvent),
) -> Result<Pushed, RegistryError> {
    let top = local_descriptor(layout, tag_or_digest)?;
    if let Some(d) = &dest.digest
        && *d != top.digest().to_string()
    {
        return Err(RegistryError::Manifest {
            reference: dest.to_string(),
            message: format!("the image to push has digest {}, not {d}", top.digest()),
        });
    }
    let reference = dest.tag.clone().unwrap_or_else(|| top.digest().to_string());
    let mut p = Pusher {
        client: Client::connect(dest, opts, true)?,
        layout,
        progress,
        blobs: HashSet::new(),
        manifests_seen: HashSet::new(),
        manifests: Vec::new(),
        uploaded: Vec::new(),
        skipped: Vec::new(),
    };
    let media_type = p.push_manifest(&top, &reference, 0)?;
    Ok(Pushed {
        reference: RegistryRef {
            digest: Some(top.digest().to_string()),
            ..dest.clone()
        },
        digest: top.digest().clone(),
        media_type,
        size: top.size(),
        manifests: p.manifests,
        uploaded: p.uploaded,
        skipped: p.skipped,
    })
}

/// The descriptor of the image to push.
fn local_descriptor(
    layout: &Layout,
    tag_or_digest: Option<&str>,
) -> Result<Descriptor, RegistryError> {
    let context = || format!("{}: finding the image to push", layout.root().display());
    let Some(s) = tag_or_digest.filter(|s| s.starts_with("sha256:")) else {
        return layout
            .resolve(tag_or_digest)
            .map_err(|source| RegistryError::Layout {
                context: context(),
                source,
            });
    };
    let digest: Digest = s.parse().map_err(|_| RegistryError::Manifest {
        reference: format!("oci:{}", layout.root().display()),
        message: format!("`{s}` is not a sha256 digest"),
    })?;
    let index = layout.index().map_err(|source| RegistryError::Layout {
        context: context(),
        source,
    })?;
    if let Some(d) = index.manifests().iter().find(|d| d.digest() == &digest) {
        return Ok(d.clone());
    }
    let bytes = layout
        .read_blob(&digest)
        .map_err(|source| RegistryError::Layout {
            context: context(),
            source,
        })?;
    let media = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
        .ok_or_else(|| RegistryError::Manifest {
            reference: format!("oci:{}@{digest}", layout.root().display()),
            message: "blob is not a manifest with a mediaType".into(),
        })?;
    Ok(Descriptor::new(
        MediaType::from(media.as_str()),
        bytes.len() as u64,
        digest,
    ))
}

/// The media type to send a manifest with: its descriptor's, which must
/// agree with the document's own `mediaType` when it has one.
fn media_type_of(
    desc: &Descriptor,
    bytes: &[u8],
    reference: &str,
) -> Result<String, RegistryError> {
    let declared = desc.media_type().to_string();
    let own = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string));
    match own {
        Some(own) if own != declared => Err(RegistryError::Manifest {
            reference: reference.to_string(),
            message: format!(
                "manifest {}: its descriptor says {declared} but the document says {own}",
                desc.digest()
            ),
        }),
        _ => Ok(declared),
    }
}

struct Pusher<'a, 'o> {
    client: Client<'o>,
    layout: &'a Layout,
    progress: &'a dyn Fn(PushEvent),
    blobs: HashSet<Digest>,
    manifests_seen: HashSet<Digest>,
    manifests: Vec<Digest>,
    uploaded: Vec<Digest>,
    skipped: Vec<Digest>,
}

/// What one upload step achieved.
enum Step {
    /// The registry holds `committed` bytes; continue at `location`.
    Chunk {
        location: String,
        committed: u64,
    },
    Committed,
}

impl Pusher<'_, '_> {
    fn layout_err(&self, what: String) -> impl FnOnce(LayoutError) -> RegistryError {
        move |source| RegistryError::Layout {
            context: what,
            source,
        }
    }

    /// Pushes `desc`'s blobs (or children) and then `desc` under
    /// `reference`; returns its media type.
    fn push_manifest(
        &mut self,
        desc: &Descriptor,
        reference: &str,
        depth: u32,
    ) -> Result<MediaType, RegistryError> {
        let at = self.client.reference().to_string();
        if depth > MAX_DEPTH {
            return Err(RegistryError::Manifest {
                reference: at,
                message: format!("indexes nested deeper than {MAX_DEPTH} levels"),
            });
        }
        let digest = desc.digest().clone();
        let bytes = self
            .layout
            .read_blob(&digest)
            .map_err(self.layout_err(format!("reading manifest {digest}")))?;
        if bytes.len() as u64 != desc.size() {
            return Err(RegistryError::Manifest {
                reference: at,
                message: format!(
                    "manifest {digest} has {} bytes, its descriptor says {}",
                    bytes.len(),
                    desc.size()
                ),
            });
        }
        let media = media_type_of(desc, &bytes, &at)?;
        let invalid = |e: serde_json::Error| RegistryError::Manifest {
            reference: at.clone(),
            message: format!("{media} {digest}: {e}"),
        };
        match kind_of(&media) {
            Some(Kind::Index) => {
                let index: ImageIndex = serde_json::from_slice(&bytes).map_err(invalid)?;
                for child in index.manifests() {
                    if self.manifests_seen.insert(child.digest().clone()) {
                        self.push_manifest(child, child.digest().as_ref(), depth + 1)?;
                    }
                }
            }
            Some(Kind::Manifest) => {
                let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(invalid)?;
                self.push_blob(manifest.config())?;
                for layer in manifest.layers() {
                    self.push_blob(layer)?;
                }
            }
            None => {
                return Err(RegistryError::Manifest {
                    reference: at,
                    message: format!("{digest} has media type {media}, not a manifest or index"),
                });
            }
        }
        let url = self.client.url(&format!("/manifests/{reference}"));
        let op = format!("PUT manifest {reference}");
        let progress = self.progress;
        let resp = self.client.send_retrying(
            Method::PUT,
            &url,
            &[("content-type", &media)],
            Some(&bytes),
            &op,
            &|attempt, e| {
                progress(PushEvent::Retry {
                    digest: digest.clone(),
                    offset: 0,
                    attempt,
                    reason: e.to_string(),
                })
            },
        )?;
        if !resp.status().is_success() {
            return Err(self.client.fail(resp, &op));
        }
        if let Some(d) = header(&resp, "docker-content-digest")
            && d != digest.to_string()
        {
            return Err(RegistryError::DigestMismatch {
                reference: at,
                what: "stored manifest".into(),
                expected: digest.to_string(),
                actual: d.to_string(),
            });
        }
        let media_type = MediaType::from(media.as_str());
        self.manifests.push(digest.clone());
        (self.progress)(PushEvent::ManifestPushed {
            digest,
            media_type: media_type.clone(),
            reference: reference.to_string(),
        });
        Ok(media_type)
    }

    fn push_blob(&mut self, desc: &Descriptor) -> Result<(), RegistryError> {
        let digest = desc.digest().clone();
        if !self.blobs.insert(digest.clone()) {
            return Ok(());
        }
        if self.exists(&digest)? {
            (self.progress)(PushEvent::BlobExists {
                digest: digest.clone(),
                size: desc.size(),
            });
            self.skipped.push(digest);
            return Ok(());
        }
        if !self.layout.has_blob(&digest) {
            if desc.urls().as_ref().is_some_and(|u| !u.is_empty()) {
                // A foreign layer: clients fetch it from its URLs.
                return Ok(());
            }
            return Err(RegistryError::Manifest {
                reference: self.client.reference().to_string(),
                message: format!(
                    "blob {digest} is neither in the layout {} nor in the registry",
                    self.layout.root().display()
                ),
            });
        }
        self.upload(desc)?;
        self.uploaded.push(digest);
        Ok(())
    }

    /// Whether the registry has the blob.
    fn exists(&mut self, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.client.url(&format!("/blobs/{digest}"));
        let op = format!("HEAD blob {digest}");
        let progress = self.progress;
        let resp =
            self.client
                .send_retrying(Method::HEAD, &url, &[], None, &op, &|attempt, e| {
                    progress(PushEvent::Retry {
                        digest: digest.clone(),
                        offset: 0,
                        attempt,
                        reason: e.to_string(),
                    })
                })?;
        match resp.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(self.client.fail(resp, &op)),
        }
    }

    fn upload(&mut self, desc: &Descriptor) -> Result<(), RegistryError> {
        let digest = desc.digest().clone();
        let size = desc.size();
        let path = self.layout.blob_path(&digest);
        let io = |source| RegistryError::Layout {
            context: format!("uploading blob {digest}"),
            source: LayoutError::Io {
                path: path.clone(),
                source,
            },
        };
        let file = File::open(&path).map_err(io)?;
        let actual = file.metadata().map_err(io)?.len();
        if actual != size {
            return Err(RegistryError::Layout {
                context: format!("uploading blob {digest}"),
                source: LayoutError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: size,
                    actual,
                },
            });
        }
        (self.progress)(PushEvent::BlobStarted {
            digest: digest.clone(),
            size,
        });
        let retries = self.client.opts.retries;
        let chunk = self.client.opts.chunk_size.max(1) as u64;
        let mut buf = vec![0u8; chunk.min(size) as usize];
        let mut location = self.start_upload(&digest)?;
        let (mut offset, mut failures, mut restarts, mut resumed) = (0u64, 0u32, 0u32, false);
        loop {
            let step = if offset < size {
                let n = (size - offset).min(chunk) as usize;
                file.read_exact_at(&mut buf[..n], offset).map_err(io)?;
                self.patch(&location, offset, &buf[..n], &digest)
            } else {
                self.commit(&location, &digest)
            };
            let err = match step {
                Ok(Step::Committed) => break,
                Ok(Step::Chunk {
                    location: l,
                    committed,
                }) => {
                    location = l;
                    if committed > offset {
                        failures = 0;
                    }
                    offset = committed.min(size);
                    (self.progress)(PushEvent::BlobProgress {
                        digest: digest.clone(),
                        sent: offset,
                        size,
                    });
                    continue;
                }
                Err(e) => e,
            };
            let broken = session_broken(&err);
            let corrupt_source = err.codes().contains(&"DIGEST_INVALID") && !resumed;
            if corrupt_source || (!broken && !err.is_retryable()) {
                return Err(err);
            }
            failures += 1;
            if failures > retries {
                return Err(RegistryError::RetriesExhausted {
                    operation: format!("{}: upload blob {digest}", self.client.reference()),
                    attempts: failures,
                    last: Box::new(err),
                });
            }
            std::thread::sleep(self.client.backoff(failures));
            let mut resume = None;
            if !broken {
                if offset >= size && self.exists(&digest)? {
                    break; // the commit went through; only its answer was lost
                }
                resume = self.upload_status(&location)?.filter(|(_, c)| *c <= size);
            }
            match resume {
                Some((l, committed)) => {
                    location = l;
                    offset = committed;
                    resumed = true;
                }
                None => {
                    restarts += 1;
                    if restarts > retries {
                        return Err(RegistryError::RetriesExhausted {
                            operation: format!(
                                "{}: upload blob {digest} (restarted)",
                                self.client.reference()
                            ),
                            attempts: restarts,
                            last: Box::new(err),
                        });
                    }
                    location = self.start_upload(&digest)?;
                    offset = 0;
                    resumed = false;
                }
            }
            (self.progress)(PushEvent::Retry {
                digest: digest.clone(),
                offset,
                attempt: failures,
                reason: err.to_string(),
            });
        }
        (self.progress)(PushEvent::BlobDone { digest, size });
        Ok(())
    }

    /// `POST .../blobs/uploads/`: a new upload session's location.
    fn start_upload(&mut self, digest: &Digest) -> Result<String, RegistryError> {
        let url = self.client.url("/blobs/uploads/");
        let op = format!("start upload of blob {digest}");
        let progress = self.progress;
        let resp =
            self.client
                .send_retrying(Method::POST, &url, &[], Some(&[]), &op, &|attempt, e| {
                    progress(PushEvent::Retry {
                        digest: digest.clone(),
                        offset: 0,
                        attempt,
                        reason: e.to_string(),
                    })
                })?;
        match (resp.status().as_u16(), header(&resp, "location")) {
            (202, Some(l)) => Ok(self.client.resolve(l)),
            (202, None) => Err(RegistryError::Manifest {
                reference: self.client.reference().to_string(),
                message: format!("{op}: the registry sent no upload Location"),
            }),
            _ => Err(self.client.fail(resp, &op)),
        }
    }

    fn patch(
        &mut self,
        location: &str,
        offset: u64,
        chunk: &[u8],
        digest: &Digest,
    ) -> Result<Step, RegistryError> {
        let end = offset + chunk.len() as u64;
        let range = format!("{offset}-{}", end - 1);
        let op = format!("upload blob {digest} bytes {range}");
        let headers = [
            ("content-type", "application/octet-stream"),
            ("content-range", range.as_str()),
        ];
        let resp = self
            .client
            .send(Method::PATCH, location, &headers, Some(chunk), &op)?;
        if !matches!(resp.status().as_u16(), 202 | 204) {
            return Err(self.client.fail(resp, &op));
        }
        let committed = header(&resp, "range")
            .and_then(|r| committed(r, end))
            .unwrap_or(end);
        let location = header(&resp, "location")
            .map_or_else(|| location.to_string(), |l| self.client.resolve(l));
        Ok(Step::Chunk {
            location,
            committed,
        })
    }

    fn commit(&mut self, location: &str, digest: &Digest) -> Result<Step, RegistryError> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", encode(digest.as_ref()));
        let op = format!("commit blob {digest}");
        let resp = self.client.send(Method::PUT, &url, &[], Some(&[]), &op)?;
        if !resp.status().is_success() {
            return Err(self.client.fail(resp, &op));
        }
        if let Some(d) = header(&resp, "docker-content-digest")
            && d != digest.to_string()
        {
            return Err(RegistryError::DigestMismatch {
                reference: self.client.reference().to_string(),
                what: "uploaded blob".into(),
                expected: digest.to_string(),
                actual: d.to_string(),
            });
        }
        Ok(Step::Committed)
    }

    /// `GET <location>`: where a broken upload can continue, or `None`
    /// when the session is gone (or the question itself failed).
    fn upload_status(&mut self, location: &str) -> Result<Option<(String, u64)>, RegistryError> {
        let op = "upload status";
        let resp = match self.client.send(Method::GET, location, &[], None, op) {
            Ok(r) => r,
            Err(e) if e.is_retryable() => return Ok(None),
            Err(e) => return Err(e),
        };
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(self.client.fail(resp, op));
        }
        if !matches!(status, 200..=299) {
            return Ok(None);
        }
        let Some(committed) = header(&resp, "range").and_then(|r| committed(r, 0)) else {
            return Ok(None);
        };
        let location = header(&resp, "location")
            .map_or_else(|| location.to_string(), |l| self.client.resolve(l));
        Ok(Some((location, committed)))
    }
}

/// Bytes committed according to a `Range: 0-<last>` answer. `0-0` means
/// nothing or one byte; `expected` (the count the caller believes) decides.
fn committed(range: &str, expected: u64) -> Option<u64> {
    let r = range.trim();
    let r = r.strip_prefix("bytes=").unwrap_or(r);
    let (start, end) = r.split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    let end: u64 = end.trim().parse().ok()?;
    Some(if end == 0 && expected != 1 {
        0
    } else {
        end + 1
    })
}

/// Whether the registry no longer accepts this upload session.
fn session_broken(e: &RegistryError) -> bool {
    let codes = e.codes();
    e.status() == Some(416)
        || [
            "BLOB_UPLOAD_UNKNOWN",
            "BLOB_UPLOAD_INVALID",
            "DIGEST_INVALID",
            "SIZE_INVALID",
        ]
        .iter()
        .any(|c| codes.contains(c))
        || (e.status() == Some(404) && codes.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_range_is_read_inclusively() {
        assert_eq!(committed("0-1048575", 0), Some(1 << 20));
        assert_eq!(committed("bytes=0-9", 10), Some(10));
        assert_eq!(committed("0-0", 0), Some(0));
        assert_eq!(committed("0-0", 1), Some(1));
        assert_eq!(committed("5-9", 10), None);
        assert_eq!(committed("junk", 10), None);
    }

    #[test]
    fn lost_upload_sessions_are_recognised() {
        let e = |status, code: &str| RegistryError::Status {
            reference: "r".into(),
            operation: "o".into(),
            status,
            errors: vec![super::super::RemoteError {
                code: code.into(),
                message: String::new(),
            }],
        };
        assert!(session_broken(&e(404, "BLOB_UPLOAD_UNKNOWN")));
        assert!(session_broken(&e(400, "BLOB_UPLOAD_INVALID")));
        assert!(session_broken(&e(416, "")));
        assert!(!session_broken(&e(400, "MANIFEST_INVALID")));
        assert!(!session_broken(&e(500, "UNKNOWN")));
    }
}
