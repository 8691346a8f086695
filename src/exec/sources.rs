//! Step sources: fetched from `http(s)://` or `file://` URLs (or a mirror),
//! verified against both declared digests, kept in a download cache keyed by
//! sha256.
//!
//! Invariants:
//! - Nothing enters the download cache unverified: a download is written to
//!   a temporary file while being hashed, checked against sha256 *and*
//!   sha512, and only then renamed to `downloads/sha256/<hex>`.
//! - A cached file is re-hashed before every use (both digests), so a file
//!   damaged on disk is detected, dropped and fetched again.
//! - `offline` means no network at all: only the download cache and
//!   `file://` or directory mirrors are consulted.
//! - Mirrors are tried before the upstream URL, each as `<mirror>/<sha256>`
//!   then `<mirror>/<file name of the URL>`.
//! - A failed fetch says why in words a person acts on: `not found` (a
//!   missing file, HTTP 404), `unreachable` (no route, refused, timed out),
//!   `HTTP <status>`, or the checksum mismatch with both digests.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256, Sha512};

use crate::defs::schema::Source;

/// Where sources come from and where verified copies are kept.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// `<cache>/downloads`.
    pub dir: PathBuf,
    pub offline: bool,
    /// URL prefixes (`http(s)://`, `file://`) or directories.
    pub mirrors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "checksum mismatch for {url}\n  expected {algo} {expected}\n  got      {algo} {actual}\nthe file was discarded; nothing was cached"
    )]
    Mismatch {
        url: String,
        algo: &'static str,
        expected: String,
        actual: String,
    },
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error(
        "{url} is not in the download cache or a local mirror, and --offline forbids downloading it"
    )]
    Offline { url: String },
    #[error("unsupported URL scheme in {url} (expected http://, https:// or file://)")]
    Scheme { url: String },
    #[error("download cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Both digests of a stream, hex.
#[derive(Debug)]
pub struct Digests {
    pub sha256: String,
    pub sha512: String,
}

/// Where a verified source came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// It was in the download cache already.
    Cached,
    /// Fetched from this URL (a mirror's or the upstream one).
    Fetched(String),
}

/// How long a connection to a server may take before the server counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns the path of a verified copy of `src` in the download cache,
/// fetching it when needed.
pub fn fetch(src: &Source, opts: &SourceOptions) -> Result<PathBuf, SourceError> {
    obtain(src, opts).map(|(path, _)| path)
}

/// [`fetch`], saying where the verified copy came from.
pub fn obtain(src: &Source, opts: &SourceOptions) -> Result<(PathBuf, Origin), SourceError> {
    let cached = opts.dir.join("sha256").join(&src.sha256);
    let cache_err = |path: &Path, source| SourceError::Cache {
        path: path.to_path_buf(),
        source,
    };
    if cached.is_file() {
        let mut f = fs::File::open(&cached).map_err(|e| cache_err(&cached, e))?;
        let d = hash_copy(&mut f, &mut io::sink()).map_err(|e| cache_err(&cached, e))?;
        if d.sha256 == src.sha256 && d.sha512 == src.sha512 {
            return Ok((cached, Origin::Cached));
        }
        if d.sha256 == src.sha256 {
            // Same content as declared by sha256, another sha512: the
            // declaration is wrong, not the cache.
            return Err(SourceError::Mismatch {
                url: src.url.clone(),
                algo: "sha512",
                expected: src.sha512.clone(),
                actual: d.sha512,
            });
        }
        // Damaged on disk: drop it and fetch again.
        fs::remove_file(&cached).map_err(|e| cache_err(&cached, e))?;
    }
    let tmp_dir = opts.dir.join("tmp");
    fs::create_dir_all(&tmp_dir).map_err(|e| cache_err(&tmp_dir, e))?;
    fs::create_dir_all(opts.dir.join("sha256")).map_err(|e| cache_err(&opts.dir, e))?;

    let mut last_err = None;
    for url in candidates(src, opts) {
        let tmp = tmp_dir.join(format!("{}.{}", src.sha256, std::process::id()));
        let result = download(&url, &tmp, opts.offline);
        match result {
            Ok(d) => {
                if let Err(e) = check(src, &d) {
                    let _ = fs::remove_file(&tmp);
                    // A mirror with wrong content is an error of the mirror
                    // only when it was the upstream URL itself.
                    if url == src.url {
                        return Err(e);
                    }
                    last_err = Some(e);
                    continue;
                }
                fs::rename(&tmp, &cached).map_err(|e| cache_err(&cached, e))?;
                return Ok((cached, Origin::Fetched(url)));
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                // The upstream URL's error wins over a mirror's.
                if url == src.url || last_err.is_none() {
                    last_err = Some(e);
                }
            }
        }
    }
    // Offline, a remote upstream was never tried: that is the reason,
    // unless a mirror held other bytes.
    let remote = !src.url.starts_with("file://");
    match last_err {
        Some(e @ SourceError::Mismatch { .. }) => Err(e),
        Some(e) if !(opts.offline && remote) => Err(e),
        _ => Err(SourceError::Offline {
            url: src.url.clone(),
        }),
    }
}

fn check(src: &Source, d: &Digests) -> Result<(), SourceError> {
    for (algo, expected, actual) in [
        ("sha256", &src.sha256, &d.sha256),
        ("sha512", &src.sha512, &d.sha512),
    ] {
        if !expected.eq_ignore_ascii_case(actual) {
            return Err(SourceError::Mismatch {
                url: src.url.clone(),
                algo,
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
    }
    Ok(())
}

/// URLs to try, mirrors first; with `offline`, only local ones.
fn candidates(src: &Source, opts: &SourceOptions) -> Vec<String> {
    let name = src.url.rsplit('/').next().unwrap_or_default();
    let mut out = Vec::new();
    for m in &opts.mirrors {
        let base = if m.contains("://") {
            m.trim_end_matches('/').to_string()
        } else {
            let abs = std::path::absolute(m).unwrap_or_else(|_| PathBuf::from(m));
            format!("file://{}", abs.display())
        };
        out.push(format!("{base}/{}", src.sha256));
        if !name.is_empty() {
            out.push(format!("{base}/{name}"));
        }
    }
    out.push(src.url.clone());
    if opts.offline {
        out.retain(|u| u.starts_with("file://"));
    }
    out
}

/// Fetches `url` into `dest`, hashing on the way.
fn download(url: &str, dest: &Path, offline: bool) -> Result<Digests, SourceError> {
    let fail = |reason: String| SourceError::Fetch {
        url: url.to_string(),
        reason,
    };
    let mut out = fs::File::create(dest).map_err(|e| SourceError::Cache {
        path: dest.to_path_buf(),
        source: e,
    })?;
    let digests = if let Some(path) = url.strip_prefix("file://") {
        let mut f = fs::File::open(path).map_err(|e| fail(file_reason(&e)))?;
        hash_copy(&mut f, &mut out).map_err(|e| fail(e.to_string()))?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        if offline {
            return Err(SourceError::Offline {
                url: url.to_string(),
            });
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .build()
            .into();
        let resp = agent.get(url).call().map_err(|e| fail(http_reason(e)))?;
        let mut body = resp.into_body().into_reader();
        hash_copy(&mut body, &mut out).map_err(|e| fail(format!("reading the body: {e}")))?
    } else {
        return Err(SourceError::Scheme {
            url: url.to_string(),
        });
    };
    out.sync_all().map_err(|e| fail(e.to_string()))?;
    Ok(digests)
}

/// Why a `file://` source cannot be opened.
fn file_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "not found (no such file)".to_string(),
        _ => e.to_string(),
    }
}

/// Why an HTTP request failed: not found, another status, or unreachable.
fn http_reason(e: ureq::Error) -> String {
    match e {
        ureq::Error::StatusCode(404) => "not found (HTTP 404)".to_string(),
        ureq::Error::StatusCode(code) => format!("HTTP {code}"),
        ureq::Error::Io(io) => format!("unreachable ({io})"),
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Timeout(_) => {
            format!("unreachable ({e})")
        }
        other => other.to_string(),
    }
}

/// Both digests of a file.
pub fn file_digests(path: &Path) -> io::Result<Digests> {
    hash_copy(&mut fs::File::open(path)?, &mut io::sink())
}

fn hash_copy(r: &mut dyn Read, w: &mut dyn Write) -> io::Result<Digests> {
    let mut s256 = Sha256::new();
    let mut s512 = Sha512::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        s256.update(&buf[..n]);
        s512.update(&buf[..n]);
        w.write_all(&buf[..n])?;
    }
    Ok(Digests {
        sha256: hex::encode(s256.finalize()),
        sha512: hex::encode(s512.finalize()),
    })
}
