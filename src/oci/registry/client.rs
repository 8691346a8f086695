//! HTTP to one repository of one registry: choosing the scheme, auth, and
//! turning answers into [`RegistryError`]s.
//!
//! - Scheme: HTTPS first. With `insecure`, certificates are not verified
//!   and plain HTTP is tried when HTTPS fails. Without it, a loopback
//!   registry that fails HTTPS is probed over HTTP only to say "pass
//!   --insecure"; other hosts are never contacted over HTTP.
//! - Auth: `GET /v2/` tells the scheme. No challenge: anonymous. `Basic`:
//!   credentials on every request to the registry host. `Bearer`: a token
//!   from the realm (with basic credentials when there are any) for
//!   `repository:<repo>:pull[,push]`; a later 401 with a challenge fetches
//!   one new token (with the challenge's scope) and repeats the request
//!   once. Credentials go only to the registry host and its realm, and
//!   never over plain HTTP to a host that is not loopback.
//! - Retries: [`Client::send_retrying`] repeats a request that failed in
//!   transport or got 408/429/5xx, at most `retries` times with exponential
//!   backoff; non-idempotent upload steps do their own recovery (push.rs).
//! - Redirects (blob downloads to storage) are followed; ureq drops the
//!   `Authorization` header on them.

use std::io::Read;
use std::time::Duration;

use ureq::Agent;
use ureq::config::AutoHeaderValue;
use ureq::http::{self, Method, Response};
use zeroize::Zeroizing;

use super::auth::{self, Challenge, Lookup, is_loopback, parse_challenge};
use super::{RegistryError, RegistryOptions, RemoteError};
use crate::oci::reference::RegistryRef;

type Body = ureq::Body;

/// Percent-encodes a query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://host[:port]` of a URL, lowercase.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    )
}

enum Auth {
    None,
    Basic(Zeroizing<String>),
    Bearer(Zeroizing<String>),
}

/// A connection to `registry/repository`.
pub(crate) struct Client<'o> {
    agent: Agent,
    pub opts: &'o RegistryOptions,
    registry: String,
    repository: String,
    reference: String,
    /// `https://host[:port]` or `http://host[:port]`.
    base: String,
    lookup: Lookup,
    /// `pull` or `pull,push`.
    actions: &'static str,
    auth: Auth,
}

impl<'o> Client<'o> {
    /// Chooses the scheme and authenticates for pulling (and pushing, when
    /// `push`) in `r`'s repository.
    pub fn connect(
        r: &RegistryRef,
        opts: &'o RegistryOptions,
        push: bool,
    ) -> Result<Self, RegistryError> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if opts.insecure {
            tls = tls.disable_verification(true);
        }
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.io_timeout))
            .timeout_per_write(Some(opts.io_timeout))
            .accept_encoding(AutoHeaderValue::None)
            .user_agent(concat!("composer/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .new_agent();
        let mut client = Client {
            agent,
            opts,
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            reference: r.to_string(),
            base: format!("https://{}", r.registry),
            lookup: auth::lookup(&r.registry, &r.repository, opts)?,
            actions: if push { "pull,push" } else { "pull" },
            auth: Auth::None,
        };
        let ping = client.ping()?;
        client.authenticate(ping)?;
        Ok(client)
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// `<base>/v2/<repository><path>`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}{}", self.base, self.repository, path)
    }

    /// An upload `Location`, absolute or relative to the registry.
    pub fn resolve(&self, location: &str) -> String {
        if location.contains("://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    /// `GET /v2/` over HTTPS, then (see the module doc) maybe over HTTP.
    fn ping(&mut self) -> Result<Response<Body>, RegistryError> {
        let https = self.raw(
            Method::GET,
            &format!("https://{}/v2/", self.registry),
            &[],
            None,
        );
        let err = match https {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let loopback = is_loopback(&self.registry);
        if !self.opts.insecure && !loopback {
            return Err(self.tls_or_transport(err, "GET /v2/"));
        }
        // A TLS server answers plain HTTP with a 400: only a registry's
        // answer counts.
        let http = self
            .raw(
                Method::GET,
                &format!("http://{}/v2/", self.registry),
                &[],
                None,
            )
            .ok()
            .filter(|r| {
                matches!(r.status().as_u16(), 200 | 401)
                    || r.headers().contains_key("docker-distribution-api-version")
            });
        match http {
            Some(resp) if self.opts.insecure => {
                self.base = format!("http://{}", self.registry);
                Ok(resp)
            }
            Some(_) => Err(RegistryError::PlainHttp {
                registry: self.registry.clone(),
            }),
            None => Err(self.tls_or_transport(err, "GET /v2/")),
        }
    }

    fn tls_or_transport(&self, e: ureq::Error, operation: &str) -> RegistryError {
        let message = e.to_string();
        let tls = matches!(e, ureq::Error::Tls(_) | ureq::Error::Rustls(_))
            || message.to_ascii_lowercase().contains("certificate");
        if tls {
            RegistryError::Tls {
                registry: self.registry.clone(),
                message,
            }
        } else {
            self.transport(e, operation)
        }
    }

    fn transport(&self, e: ureq::Error, operation: &str) -> RegistryError {
        let refused = matches!(&e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused)
            || matches!(e, ureq::Error::ConnectionFailed);
        let mut message = e.to_string();
        if refused {
            message.push_str(&format!("; is a registry listening on {}?", self.registry));
        }
        RegistryError::Transport {
            reference: self.reference.clone(),
            operation: operation.to_string(),
            message,
        }
    }

    /// Sets up auth from the answer to `GET /v2/`.
    fn authenticate(&mut self, ping: Response<Body>) -> Result<(), RegistryError> {
        match ping.status().as_u16() {
            200..=299 => Ok(()),
            401 => {
                let challenge = challenge_of(&ping);
                drop(ping);
                match challenge {
                    Some(c) if self.use_challenge(&c, None)? => Ok(()),
                    // No usable credentials: requests will say unauthorized.
                    Some(_) => Ok(()),
                    None => Err(RegistryError::Unauthorized {
                        reference: self.reference.clone(),
                        operation: "GET /v2/".into(),
                        status: 401,
                        errors: Vec::new(),
                        hint: "the registry sent no WWW-Authenticate challenge".into(),
                    }),
                }
            }
            404 => Err(RegistryError::Manifest {
                reference: self.reference.clone(),
                message: format!(
                    "{}/v2/ answers 404: not an OCI distribution registry",
                    self.base
                ),
            }),
            _ => Err(self.fail(ping, "GET /v2/")),
        }
    }

    /// Adopts `c`; `true` when requests now carry new authorization.
    fn use_challenge(&mut self, c: &Challenge, scope: Option<&str>) -> Result<bool, RegistryError> {
        match c.scheme.as_str() {
            "basic" => {
                let Some(creds) = self.lookup.credentials() else {
                    return Ok(false);
                };
                if matches!(self.auth, Auth::Basic(_)) {
                    return Ok(false); // these credentials were refused
                }
                self.check_clear_text(&self.base)?;
                self.auth = Auth::Basic(creds.basic_header());
                Ok(true)
            }
            "bearer" => {
                let default_scope = format!("repository:{}:{}", self.repository, self.actions);
                let scope = scope
                    .or(c.param("scope"))
                    .unwrap_or(&default_scope)
                    .to_string();
                let token = self.fetch_token(c, &scope)?;
                self.auth = Auth::Bearer(Zeroizing::new(format!("Bearer {}", token.as_str())));
                Ok(true)
            }
            other => Err(RegistryError::Credentials {
                registry: self.registry.clone(),
                message: format!("unsupported authentication scheme `{other}`"),
            }),
        }
    }

    fn check_clear_text(&self, url: &str) -> Result<(), RegistryError> {
        let o = origin(url);
        let host = o.split_once("://").map_or("", |(_, h)| h);
        if o.starts_with("http://") && !is_loopback(host) {
            return Err(RegistryError::InsecureCredentials {
                registry: self.registry.clone(),
                host: host.to_string(),
            });
        }
        Ok(())
    }

    /// A bearer token for `scope` from the challenge's realm.
    fn fetch_token(&self, c: &Challenge, scope: &str) -> Result<Zeroizing<String>, RegistryError> {
        let cred_err = |message: String| RegistryError::Credentials {
            registry: self.registry.clone(),
            message,
        };
        let realm = c
            .param("realm")
            .ok_or_else(|| cred_err("bearer challenge without a realm".into()))?;
        if !realm.starts_with("https://") && !realm.starts_with("http://") {
            return Err(cred_err(format!(
                "token realm `{realm}` is not an http(s) URL"
            )));
        }
        let mut url = realm.to_string();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(service) = c.param("service") {
            url.push_str(&format!("{sep}service={}", encode(service)));
            sep = '&';
        }
        url.push_str(&format!("{sep}scope={}", encode(scope)));
        let basic = match self.lookup.credentials() {
            Some(creds) => {
                self.check_clear_text(realm)?;
                Some(creds.basic_header())
            }
            None => None,
        };
        let headers: Vec<(&str, &str)> = basic
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        let resp = self
            .raw(Method::GET, &url, &headers, None)
            .map_err(|e| self.transport(e, "GET token"))?;
        if !resp.status().is_success() {
            return Err(self.fail(resp, &format!("token for {scope}")));
        }
        let mut resp = resp;
        let body = Zeroizing::new(
            resp.body_mut()
                .with_config()
                .limit(1 << 20)
                .read_to_vec()
                .map_err(|e| self.transport(e, "reading token"))?,
        );
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| cred_err(format!("token service answered with invalid JSON: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(|t| Zeroizing::new(t.to_string()))
            .ok_or_else(|| cred_err("token service answered without `token`".into()))
    }

    /// One request, no auth, no retry.
    fn raw(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response<Body>, ureq::Error> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        match body {
            Some(bytes) => self.agent.run(b.body(bytes)?),
            None => self.agent.run(b.body(())?),
        }
    }

    /// One request with auth; a 401 with a challenge re-authenticates once
    /// and repeats it. Returns every HTTP answer; transport failures are
    /// [`RegistryError::Transport`].
    pub fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        operation: &str,
    ) -> Result<Response<Body>, RegistryError> {
        let mut renewed = false;
        loop {
            let same_host = origin(url) == origin(&self.base);
            let authorization = match &self.auth {
                Auth::Basic(h) | Auth::Bearer(h) if same_host => Some(h.clone()),
                _ => None,
            };
            let mut all: Vec<(&str, &str)> = headers.to_vec();
            if let Some(h) = &authorization {
                all.push(("authorization", h.as_str()));
            }
            let resp = self
                .raw(method.clone(), url, &all, body)
                .map_err(|e| self.transport(e, operation))?;
            if resp.status().as_u16() == 401
                && !renewed
                && let Some(c) = challenge_of(&resp)
            {
                renewed = true;
                let scope = if c.scheme == "bearer" {
                    c.param("scope").map(str::to_string)
                } else {
                    None
                };
                if self.use_challenge(&c, scope.as_deref())? {
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// [`send`](Self::send), retrying transport failures and 408/429/5xx
    /// answers; `on_retry(attempt, error)` is told before each wait.
    pub fn send_retrying(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        operation: &str,
        on_retry: &dyn Fn(u32, &RegistryError),
    ) -> Result<Response<Body>, RegistryError> {
        let mut attempt = 0;
        loop {
            let err = match self.send(method.clone(), url, headers, body, operation) {
                Ok(resp) if !retryable_status(resp.status().as_u16()) => return Ok(resp),
                Ok(resp) => self.fail(resp, operation),
                Err(e) if e.is_retryable() => e,
                Err(e) => return Err(e),
            };
            attempt += 1;
            if attempt > self.opts.retries {
                return Err(RegistryError::RetriesExhausted {
                    operation: format!("{}: {operation}", self.reference),
                    attempts: attempt,
                    last: Box::new(err),
                });
            }
            on_retry(attempt, &err);
            std::thread::sleep(self.backoff(attempt));
        }
    }

    /// The wait before retry number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.opts
            .backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(30))
    }

    /// The error for an unexpected answer, with the registry's error body.
    pub fn fail(&self, resp: Response<Body>, operation: &str) -> RegistryError {
        let status = resp.status().as_u16();
        let errors = remote_errors(resp);
        if status == 401 || status == 403 {
            RegistryError::Unauthorized {
                reference: self.reference.clone(),
                operation: operation.to_string(),
                status,
                errors,
                hint: self.lookup.hint(&self.registry, status),
            }
        } else {
            RegistryError::Status {
                reference: self.reference.clone(),
                operation: operation.to_string(),
                status,
                errors,
            }
        }
    }
}

pub(crate) fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status)
}

fn challenge_of(resp: &Response<Body>) -> Option<Challenge> {
    resp.headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(parse_challenge)
        .max_by_key(|c| c.scheme == "bearer")
}

/// A response header as text.
pub(crate) fn header<'r>(resp: &'r Response<Body>, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Decodes `{"errors":[{"code","message"}]}`; any other body becomes one
/// message (its first 200 characters).
fn remote_errors(mut resp: Response<Body>) -> Vec<RemoteError> {
    let mut body = Vec::new();
    let _ = resp
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .reader()
        .take(64 << 10)
        .read_to_end(&mut body);
    parse_errors(&body)
}

pub(crate) fn parse_errors(body: &[u8]) -> Vec<RemoteError> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(list) = v.get("errors").and_then(|e| e.as_array())
    {
        let text = |e: &serde_json::Value, k: &str| {
            e.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string()
        };
        return list
            .iter()
            .map(|e| RemoteError {
                code: text(e, "code"),
                message: text(e, "message"),
            })
            .collect();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return Vec::new();
    }
    vec![RemoteError {
        code: String::new(),
        message: text.chars().take(200).collect(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_error_bodies_are_decoded() {
        let e = parse_errors(
            br#"{"errors":[{"code":"DENIED","message":"no","detail":{"x":1}},{"code":"UNKNOWN"}]}"#,
        );
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].code.as_str(), e[0].message.as_str()),
            ("DENIED", "no")
        );
        assert_eq!(
            parse_errors(b"<html>bad gateway</html>")[0].message,
            "<html>bad gateway</html>"
        );
        assert!(parse_errors(b"").is_empty());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(encode("sha256:ab"), "sha256%3Aab");
    }

    #[test]
    fn origins_compare_scheme_and_host() {
        assert_eq!(
            origin("http://127.0.0.1:5000/v2/x?y"),
            "http://127.0.0.1:5000"
        );
        assert_ne!(origin("https://a/v2/"), origin("https://b/v2/"));
    }
}
