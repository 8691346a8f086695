//! Whether a registry holds a tag, which manifest it names, and that
//! manifest's bytes ([`manifest_bytes`]): `HEAD
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
    Ok(get(client, url, reference)?.map(|(digest, _)| digest))
}

/// The manifest or index `r` names, as its digest and exact bytes, or
/// `None` when the registry has no such manifest. When `r` names a digest,
/// bytes with another digest are an error.
pub fn manifest_bytes(
    r: &RegistryRef,
    opts: &RegistryOptions,
) -> Result<Option<(Digest, Vec<u8>)>, RegistryError> {
    let mut client = Client::connect(r, opts, false)?;
    let reference = r.manifest_reference();
    let url = client.url(&format!("/manifests/{reference}"));
    let got = get(&mut client, &url, reference)?;
    if let (Some(want), Some((digest, _))) = (&r.digest, &got)
        && *want != digest.to_string()
    {
        return Err(RegistryError::Manifest {
            reference: r.to_string(),
            message: format!("the registry answered a manifest with digest {digest}"),
        });
    }
    Ok(got)
}

fn get(
    client: &mut Client<'_>,
    url: &str,
    reference: &str,
) -> Result<Option<(Digest, Vec<u8>)>, RegistryError> {
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
    let bytes = read_small(client, &mut resp, &op)?;
    let digest = sha256_digest(&hex::encode(Sha256::digest(&bytes)));
    Ok(Some((digest, bytes)))
}

/// Every tag of `r`'s repository (`GET /v2/<repo>/tags/list`, following
/// the `Link` header of a paginated answer); empty when the repository
/// does not exist.
pub fn tags(r: &RegistryRef, opts: &RegistryOptions) -> Result<Vec<String>, RegistryError> {
    let mut client = Client::connect(r, opts, false)?;
    let mut url = client.url("/tags/list?n=1000");
    let mut out = Vec::new();
    loop {
        let op = "GET tags/list".to_string();
        let mut resp = client.send_retrying(Method::GET, &url, &[], None, &op, &|_, _| {})?;
        match resp.status().as_u16() {
            404 => return Ok(out),
            200 => {}
            _ => return Err(client.fail(resp, &op)),
        }
        let next = header(&resp, "link").and_then(next_link);
        let body = read_small(&client, &mut resp, &op)?;
        let list: TagList = serde_json::from_slice(&body).map_err(|e| RegistryError::Manifest {
            reference: r.to_string(),
            message: format!("tags/list: {e}"),
        })?;
        out.extend(list.tags.unwrap_or_default());
        match next {
            Some(path) => url = client.resolve(&path),
            None => return Ok(out),
        }
    }
}

#[derive(serde::Deserialize)]
struct TagList {
    tags: Option<Vec<String>>,
}

/// The target of `<...>; rel="next"` in a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',')
        .find(|part| part.contains("rel=\"next\""))
        .and_then(|part| {
            let start = part.find('<')? + 1;
            let end = part.find('>')?;
            Some(part[start..end].to_string())
        })
}

/// The body of an answer that must be small (a manifest, a tag list).
fn read_small(
    client: &Client<'_>,
    resp: &mut ureq::http::Response<ureq::Body>,
    op: &str,
) -> Result<Vec<u8>, RegistryError> {
    resp.body_mut()
        .with_config()
        .limit(MANIFEST_LIMIT)
        .read_to_vec()
        .map_err(|e| RegistryError::Transport {
            reference: client.reference().to_string(),
            operation: op.to_string(),
            message: e.to_string(),
        })
}
