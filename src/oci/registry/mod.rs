//! An OCI distribution client: [`push`] an image (a manifest, or an index
//! with its child manifests) from an OCI layout to a registry, [`pull`]
//! one from a registry into a layout, and ask which manifest a tag names
//! ([`manifest_digest`]).
//!
//! | file        | owns                                                          |
//! |-------------|---------------------------------------------------------------|
//! | `mod.rs`    | the public API: options, events, results, errors              |
//! | `client.rs` | HTTP: scheme choice, auth (anonymous, basic, bearer), error bodies, retries of idempotent requests |
//! | `auth.rs`   | credentials: options, then credential files                   |
//! | `push.rs`   | blob upload (HEAD, chunked PATCH with resume, PUT), manifests |
//! | `pull.rs`   | manifest selection and verification, verified blob download   |
//! | `head.rs`   | whether a tag exists, and the digest of what it names         |
//!
//! Invariants:
//! - Manifests and indexes travel as their exact bytes: pushed as read from
//!   the layout, stored as received. Nothing is re-serialised, so digests
//!   on both sides are equal.
//! - Push order is blobs, then child manifests, then the index; the tag is
//!   written last, so a registry never serves a tag whose content is
//!   missing.
//! - Pull verifies every manifest (against the requested digest and
//!   `Docker-Content-Digest`) and every blob (through
//!   [`BlobWriter::finish`](crate::oci::layout::BlobWriter::finish)) before
//!   anything is named in the layout; a manifest is stored after its blobs
//!   and the tag is set last.
//! - Credentials are never printed ([`RegistryOptions`]' `Debug` redacts
//!   the password) and never sent over plain HTTP to a host that is not
//!   loopback.
//! - Retries are bounded ([`RegistryOptions::retries`]) with exponential
//!   backoff; only transport failures and 408/429/5xx answers are retried.

mod auth;
mod client;
mod head;
mod pull;
mod push;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use oci_spec::image::{Digest, MediaType};

use super::layout::LayoutError;
use super::reference::RegistryRef;

pub use head::{manifest_bytes, manifest_digest, tags};
pub use pull::pull;
pub use push::push;

/// Docker's schema 2 manifest, structurally an OCI image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list, structurally an OCI image index.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// How to talk to a registry.
#[derive(Clone)]
pub struct RegistryOptions {
    /// Allow plain HTTP (after HTTPS fails) and skip TLS certificate
    /// verification, like skopeo's `--tls-verify=false`.
    pub insecure: bool,
    /// Credentials; when absent they are looked up in the credential
    /// files (see `auth_file`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The only credential file to read (skopeo's `--authfile`). Without
    /// it: `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`.
    pub auth_file: Option<PathBuf>,
    /// Bytes per upload `PATCH`.
    pub chunk_size: usize,
    /// Consecutive failures tolerated per request or blob before giving up.
    pub retries: u32,
    /// The first retry waits this long; each further one twice as long
    /// (at most 30 s).
    pub backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for any single read or write on a connection.
    pub io_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: false,
            username: None,
            password: None,
            auth_file: None,
            chunk_size: 8 << 20,
            retries: 5,
            backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(120),
        }
    }
}

impl fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("auth_file", &self.auth_file)
            .field("chunk_size", &self.chunk_size)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

/// What a push is doing, for progress display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushEvent {
    /// The registry already has this blob: nothing is sent.
    BlobExists {
        digest: Digest,
        size: u64,
    },
    BlobStarted {
        digest: Digest,
        size: u64,
    },
    /// `sent` bytes are committed in the registry.
    BlobProgress {
        digest: Digest,
        sent: u64,
        size: u64,
    },
    /// A request failed and is retried after a backoff; an upload resumes
    /// at `offset` (0 when the registry dropped the upload session).
    Retry {
        digest: Digest,
        offset: u64,
        attempt: u32,
        reason: String,
    },
    BlobDone {
        digest: Digest,
        size: u64,
    },
    /// A manifest or index is stored under `reference` (tag or digest).
    ManifestPushed {
        digest: Digest,
        media_type: MediaType,
        reference: String,
    },
}

/// What a pull is doing, for progress display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullEvent {
    /// A manifest or index was received and verified.
    Manifest {
        digest: Digest,
        media_type: MediaType,
    },
    /// The layout already has this blob: nothing is downloaded.
    BlobPresent {
        digest: Digest,
        size: u64,
    },
    BlobStarted {
        digest: Digest,
        size: u64,
    },
    BlobProgress {
        digest: Digest,
        received: u64,
        size: u64,
    },
    /// A download failed and is retried, resuming at `offset` when the
    /// registry honours ranges. `digest` is `None` for a manifest asked
    /// for by tag.
    Retry {
        digest: Option<Digest>,
        offset: u64,
        attempt: u32,
        reason: String,
    },
    BlobDone {
        digest: Digest,
        size: u64,
    },
}

/// The result of a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The destination with the pushed digest.
    pub reference: RegistryRef,
    /// Digest, media type and size of the top-level manifest or index.
    pub digest: Digest,
    pub media_type: MediaType,
    pub size: u64,
    /// Every manifest stored, children before their index.
    pub manifests: Vec<Digest>,
    /// Blobs sent to the registry.
    pub uploaded: Vec<Digest>,
    /// Blobs the registry already had.
    pub skipped: Vec<Digest>,
}

/// One entry of a registry's `{"errors":[{"code","message"}]}` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteError {
    pub code: String,
    pub message: String,
}

/// `HTTP 404 (MANIFEST_UNKNOWN: manifest unknown)`.
fn status_text(status: &u16, errors: &[RemoteError]) -> String {
    let mut s = format!("HTTP {status}");
    if !errors.is_empty() {
        let list: Vec<String> = errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect();
        s.push_str(&format!(" ({})", list.join("; ")));
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: the registry speaks plain HTTP; pass --insecure to use it")]
    PlainHttp { registry: String },
    #[error(
        "{registry}: TLS failed: {message}; if the registry serves plain HTTP or a self-signed certificate, pass --insecure"
    )]
    Tls { registry: String, message: String },
    #[error("{reference}: {operation}: {message}")]
    Transport {
        reference: String,
        operation: String,
        message: String,
    },
    #[error("{reference}: {operation}: {}", status_text(status, errors))]
    Status {
        reference: String,
        operation: String,
        status: u16,
        errors: Vec<RemoteError>,
    },
    #[error(
        "{reference}: {operation}: unauthorized, {}; {hint}",
        status_text(status, errors)
    )]
    Unauthorized {
        reference: String,
        operation: String,
        status: u16,
        errors: Vec<RemoteError>,
        hint: String,
    },
    #[error(
        "{registry}: refusing to send credentials over plain HTTP to {host}; the registry or its token service must use HTTPS"
    )]
    InsecureCredentials { registry: String, host: String },
    #[error("{registry}: credentials: {message}")]
    Credentials { registry: String, message: String },
    #[error(
        "{reference}: {what} {expected}: received content with digest {actual}; nothing was stored"
    )]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{reference}: {message}")]
    Manifest { reference: String, message: String },
    #[error("{reference}: no manifest for platform {platform} (available: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("invalid platform `{0}`: expected OS/ARCH[/VARIANT], e.g. linux/amd64")]
    InvalidPlatform(String),
    #[error("{operation}: gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        operation: String,
        attempts: u32,
        last: Box<RegistryError>,
    },
    #[error("{context}: {source}")]
    Layout {
        context: String,
        #[source]
        source: LayoutError,
    },
}

impl RegistryError {
    /// Whether trying the same request again may succeed: transport
    /// failures and 408, 429 and 5xx answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => client::retryable_status(*status),
            _ => false,
        }
    }

    /// The registry's error codes, when it sent any.
    pub fn codes(&self) -> Vec<&str> {
        match self {
            RegistryError::Status { errors, .. } | RegistryError::Unauthorized { errors, .. } => {
                errors.iter().map(|e| e.code.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The HTTP status of a registry answer, if this error is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } | RegistryError::Unauthorized { status, .. } => {
                Some(*status)
            }
            RegistryError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }
}

/// What kind of document a manifest media type names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Index,
    Manifest,
}

pub(crate) fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        "application/vnd.oci.image.index.v1+json" | DOCKER_MANIFEST_LIST => Some(Kind::Index),
        "application/vnd.oci.image.manifest.v1+json" | DOCKER_MANIFEST => Some(Kind::Manifest),
        _ => None,
    }
}

/// Nested indexes deeper than this are refused (a loop guard).
pub(crate) const MAX_DEPTH: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_options_never_shows_the_password() {
        let o = RegistryOptions {
            username: Some("me".into()),
            password: Some("hunter2".into()),
            ..Default::default()
        };
        let s = format!("{o:?}");
        assert!(s.contains("me") && !s.contains("hunter2"), "{s}");
    }

    #[test]
    fn status_errors_show_the_registry_codes() {
        let e = RegistryError::Status {
            reference: "127.0.0.1:5000/a:b".into(),
            operation: "GET manifest b".into(),
            status: 404,
            errors: vec![RemoteError {
                code: "MANIFEST_UNKNOWN".into(),
                message: "manifest unknown".into(),
            }],
        };
        assert_eq!(
            e.to_string(),
            "127.0.0.1:5000/a:b: GET manifest b: HTTP 404 (MANIFEST_UNKNOWN: manifest unknown)"
        );
        assert!(!e.is_retryable());
    }
}
