//! Whether a registry holds a tag, and which manifest it names: `HEAD
//! /v2/<repo>/manifests/<tag>`, read-only (the connection asks for pull
//! access only).
//!
//! - The digest is the registry's `Docker-Content-Digest`; a registry that
//!   does not send it on `HEAD` is asked with `GET` and the manifest's
//!   bytes are hashed (they are stored as pushed, so the digest is the one
//!   the pusher computed).
//! - `404` (`MANIFEST_UNKNOWN`, `NAME_UNKNOWN`: no such tag or repository)
//!   means absent; any other failure is an error, never "absent": a caller
//!   deciding whether to build or overwrite must not guess.
//! - `Accept` names the same manifest and index types a pull accepts, so
//!   the registry answers with the stored document, not a conversion.

use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};
use ureq::http::Method;

use super::client::{Client, header};
use super::pull::{ACCEPT, MANIFEST_LIMIT};
use super::{RegistryError, RegistryOptions};
use crate::oci::layout::sha256_digest;
use crate::oci::reference::RegistryRef;

/// The digest of the manifest or index `r` (its tag or digest) names in
/// the registry, or `None` when the registry has no such manifest.
pub fn manifest_digest(
    r: &RegistryRef,
    opts: &RegistryOptions,
) -> Result<Option<Digest>, RegistryError> {
    let mut client = Client::connect(r, opts, false)?;
    let reference = r.manifest_reference();
    let url = client.url(&format!("/manifests/{reference}"));
    let op = format!("HEAD manifest {reference}");
    let resp = client.send_retrying(
        Method::HEAD,
        &url,
        &[("accept", ACCEPT)],
        None,
        &op,
        &|_, _| {},
    )?;
    match resp.status().as_u16() {
        404 => return Ok(None),
        200..=299 => {}
        _ => return Err(client.fail(resp, &op)),
    }
    if let Some(d) = header(&resp, "docker-content-digest")
        && let Ok(digest) = d.parse::<Digest>()
    {
        return Ok(Some(digest));
    }
    drop(resp);
    get_and_hash(&mut client, &url, reference)
}

/// `GET` the manifest and hash its bytes (no `Docker-Content-Digest` on
/// `HEAD`).
fn get_and_hash(
    client: &mut Client<'_>,
    url: &str,
    reference: &str,
) -> Result<Option<Digest>, RegistryError> {
    let op = format!("GET manifest {reference}");
    let mut resp = client.send_retrying(
        Method::GET,
        url,
        &[("accept", ACCEPT)],
        None,
        &op,
        &|_, _| {},
    )?;
    match resp.status().as_u16() {
        404 => return Ok(None),
        200 => {}
        _ => return Err(client.fail(resp, &op)),
    }
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(MANIFEST_LIMIT)
        .read_to_vec()
        .map_err(|e| RegistryError::Transport {
            reference: client.reference().to_string(),
            operation: op.clone(),
            message: e.to_string(),
        })?;
    Ok(Some(sha256_digest(&hex::encode(Sha256::digest(&bytes)))))
}
