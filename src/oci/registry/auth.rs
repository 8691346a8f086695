//! Registry credentials: from [`RegistryOptions`] (username and password),
//! else from the first credential file that has an entry for the registry;
//! and the `WWW-Authenticate` challenges that ask for them.
//!
//! Files searched, in order (like containers-auth.json(5), then Docker):
//! `RegistryOptions::auth_file` alone when given (it must be readable
//! JSON); otherwise `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`
//! (or `~/.docker/config.json`). Missing files are skipped; an unreadable
//! one is skipped and named in the hint of an "unauthorized" error.
//!
//! An entry is `auths.<key>.auth`, base64 of `user:password`. Keys may carry
//! a scheme and a `/v1/` or `/v2/` suffix (`https://index.docker.io/v1/`)
//! or name a repository prefix (`host/org`, as podman writes them); the
//! longest key matching the repository wins. Credential helpers
//! (`credsStore`, `credHelpers`) are not run: the lookup says so instead.
//!
//! Invariants: a password lives in [`Zeroizing`] memory and is never part
//! of `Debug` output or of an error message.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use zeroize::Zeroizing;

use super::{RegistryError, RegistryOptions};

/// A user name and its password.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> Zeroizing<String> {
        let plain = Zeroizing::new(format!("{}:{}", self.username, self.password.as_str()));
        Zeroizing::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(plain.as_bytes())
        ))
    }
}

/// The outcome of a credential lookup, kept to explain a refusal.
#[derive(Clone, Debug)]
pub(crate) enum Lookup {
    Found {
        credentials: Credentials,
        source: String,
    },
    NotFound {
        searched: Vec<PathBuf>,
        helper: Option<String>,
        /// Credential files that could not be read, with why.
        problems: Vec<String>,
    },
}

impl Lookup {
    pub fn credentials(&self) -> Option<&Credentials> {
        match self {
            Lookup::Found { credentials, .. } => Some(credentials),
            Lookup::NotFound { .. } => None,
        }
    }

    /// What to tell a user whose request was refused.
    pub fn hint(&self, registry: &str, status: u16) -> String {
        match self {
            Lookup::Found {
                credentials,
                source,
            } if status == 403 => format!(
                "the credentials of `{}` (from {source}) are not allowed to do this",
                credentials.username
            ),
            Lookup::Found {
                credentials,
                source,
            } => format!(
                "the registry rejected the credentials of `{}` (from {source}); check them or log in again",
                credentials.username
            ),
            Lookup::NotFound {
                searched,
                helper,
                problems,
            } => {
                let mut s = format!(
                    "no credentials for {registry}: pass --username and --password, or log in with `skopeo login {registry}` (searched: {})",
                    if searched.is_empty() {
                        "no credential file".to_string()
                    } else {
                        searched
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
                if let Some(h) = helper {
                    s.push_str(&format!(
                        "; credential helper `{h}` is configured but not supported, so pass the credentials directly"
                    ));
                }
                for p in problems {
                    s.push_str(&format!("; skipped {p}"));
                }
                s
            }
        }
    }
}

/// Credentials for `repository` on `registry` (`host[:port]`).
pub(crate) fn lookup(
    registry: &str,
    repository: &str,
    opts: &RegistryOptions,
) -> Result<Lookup, RegistryError> {
    lookup_with_env(registry, repository, opts, &|k| std::env::var_os(k))
}

fn lookup_with_env(
    registry: &str,
    repository: &str,
    opts: &RegistryOptions,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Lookup, RegistryError> {
    match (&opts.username, &opts.password) {
        (Some(u), Some(p)) => {
            return Ok(Lookup::Found {
                credentials: Credentials {
                    username: u.clone(),
                    password: Zeroizing::new(p.clone()),
                },
                source: "the command line".into(),
            });
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(RegistryError::Credentials {
                registry: registry.into(),
                message: "a username needs a password and a password a username".into(),
            });
        }
        (None, None) => {}
    }
    let files = match &opts.auth_file {
        Some(f) => vec![f.clone()],
        None => search_paths(env),
    };
    let (mut searched, mut helper, mut problems) = (Vec::new(), None, Vec::new());
    // A file named by the options must be usable; a broken file found by
    // searching only matters if the registry asks for credentials.
    let mut problem = |message: String| match &opts.auth_file {
        Some(_) => Err(RegistryError::Credentials {
            registry: registry.into(),
            message,
        }),
        None => {
            problems.push(message);
            Ok(())
        }
    };
    for file in files {
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.auth_file.is_none() => {
                continue;
            }
            Err(e) => {
                problem(format!("{}: {e}", file.display()))?;
                continue;
            }
        };
        searched.push(file.clone());
        let entry = match from_file(&bytes, registry, repository) {
            Ok(entry) => entry,
            Err(message) => {
                problem(format!("{}: {message}", file.display()))?;
                continue;
            }
        };
        match entry {
            FileEntry::Credentials(credentials) => {
                return Ok(Lookup::Found {
                    credentials,
                    source: file.display().to_string(),
                });
            }
            FileEntry::Helper(h) => helper = helper.or(Some(h)),
            FileEntry::None => {}
        }
    }
    Ok(Lookup::NotFound {
        searched,
        helper,
        problems,
    })
}

/// The credential files to search when none is given, in order.
fn search_paths(env: &dyn Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut out = Vec::new();
    if let Some(f) = set("REGISTRY_AUTH_FILE") {
        out.push(f);
    }
    if let Some(d) = set("XDG_RUNTIME_DIR") {
        out.push(d.join("containers/auth.json"));
    }
    match (set("DOCKER_CONFIG"), set("HOME")) {
        (Some(d), _) => out.push(d.join("config.json")),
        (None, Some(h)) => out.push(h.join(".docker/config.json")),
        (None, None) => {}
    }
    out
}

enum FileEntry {
    Credentials(Credentials),
    Helper(String),
    None,
}

fn from_file(bytes: &[u8], registry: &str, repository: &str) -> Result<FileEntry, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut best: Option<(usize, &serde_json::Value)> = None;
    if let Some(auths) = v.get("auths").and_then(|a| a.as_object()) {
        for (key, entry) in auths {
            if let Some(score) = key_matches(key, registry, repository)
                && best.is_none_or(|(s, _)| score > s)
            {
                best = Some((score, entry));
            }
        }
    }
    if let Some((_, entry)) = best
        && let Some(auth) = entry.get("auth").and_then(|a| a.as_str())
        && !auth.is_empty()
    {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| format!("auths entry for {registry}: `auth` is not base64"))?,
        );
        let text = std::str::from_utf8(&decoded)
            .map_err(|_| format!("auths entry for {registry}: `auth` is not UTF-8"))?;
        let (user, pass) = text
            .split_once(':')
            .ok_or_else(|| format!("auths entry for {registry}: `auth` is not user:password"))?;
        return Ok(FileEntry::Credentials(Credentials {
            username: user.to_string(),
            password: Zeroizing::new(pass.to_string()),
        }));
    }
    let host = registry_alias(registry);
    let helper = v
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| registry_alias(&normalise_key(k).0) == host)
        })
        .and_then(|(_, v)| v.as_str())
        .or_else(|| v.get("credsStore").and_then(|s| s.as_str()));
    Ok(match helper {
        Some(h) => FileEntry::Helper(h.to_string()),
        None => FileEntry::None,
    })
}

/// `https://host/v1/` → (`host`, ``); `host/org/repo` → (`host`, `org/repo`).
fn normalise_key(key: &str) -> (String, String) {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key)
        .trim_end_matches('/');
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    let path = match path {
        "v1" | "v2" => "",
        p => p,
    };
    (host.to_ascii_lowercase(), path.to_string())
}

/// Docker Hub has several names.
fn registry_alias(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        h => h.to_ascii_lowercase(),
    }
}

/// How specifically `key` names `registry/repository` (`None`: not at all).
fn key_matches(key: &str, registry: &str, repository: &str) -> Option<usize> {
    let (host, path) = normalise_key(key);
    if registry_alias(&host) != registry_alias(registry) {
        return None;
    }
    if path.is_empty() {
        return Some(0);
    }
    let under = repository == path
        || repository
            .strip_prefix(path.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
    under.then_some(path.len())
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lowercase: `basic` or `bearer`.
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="https://auth",service="reg",scope="repository:a:pull"`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key, value));
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// Whether `host` (`name[:port]`) is this machine.
pub(crate) fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads `path` as a credential file.
#[cfg(test)]
fn read_entry(path: &std::path::Path, registry: &str, repository: &str) -> Option<Credentials> {
    match from_file(&std::fs::read(path).ok()?, registry, repository).ok()? {
        FileEntry::Credentials(c) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn search_order_follows_containers_then_docker() {
        let env = |k: &str| match k {
            "REGISTRY_AUTH_FILE" => Some("/a/auth.json".into()),
            "XDG_RUNTIME_DIR" => Some("/run/user/0".into()),
            "HOME" => Some("/root".into()),
            _ => None,
        };
        assert_eq!(
            search_paths(&env),
            vec![
                PathBuf::from("/a/auth.json"),
                PathBuf::from("/run/user/0/containers/auth.json"),
                PathBuf::from("/root/.docker/config.json"),
            ]
        );
        let env = |k: &str| match k {
            "DOCKER_CONFIG" => Some("/d".into()),
            "HOME" => Some("/root".into()),
            _ => None,
        };
        assert_eq!(search_paths(&env), vec![PathBuf::from("/d/config.json")]);
    }

    #[test]
    fn most_specific_auth_entry_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        let json = serde_json::json!({"auths": {
            "https://127.0.0.1:5000/v2/": {"auth": b64("host:pw1")},
            "127.0.0.1:5000/team": {"auth": b64("team:pw2")},
            "https://index.docker.io/v1/": {"auth": b64("hub:pw3")},
        }});
        std::fs::write(&f, json.to_string()).unwrap();
        assert_eq!(
            read_entry(&f, "127.0.0.1:5000", "team/app")
                .unwrap()
                .username,
            "team"
        );
        assert_eq!(
            read_entry(&f, "127.0.0.1:5000", "teamx/app")
                .unwrap()
                .username,
            "host"
        );
        let hub = read_entry(&f, "docker.io", "library/alpine").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "pw3")
        );
        assert!(read_entry(&f, "ghcr.io", "x").is_none());
    }

    #[test]
    fn options_win_and_helpers_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        std::fs::write(&f, r#"{"auths":{},"credsStore":"desktop"}"#).unwrap();
        let opts = RegistryOptions {
            auth_file: Some(f.clone()),
            ..Default::default()
        };
        let l = lookup_with_env("ghcr.io", "x", &opts, &|_| None).unwrap();
        let hint = l.hint("ghcr.io", 401);
        assert!(
            hint.contains("desktop") && hint.contains("--username"),
            "{hint}"
        );
        let opts = RegistryOptions {
            username: Some("u".into()),
            password: Some("secret".into()),
            auth_file: Some(f),
            ..Default::default()
        };
        let l = lookup_with_env("ghcr.io", "x", &opts, &|_| None).unwrap();
        assert_eq!(l.credentials().unwrap().username, "u");
        assert!(!format!("{l:?}").contains("secret"));
        assert!(!l.hint("ghcr.io", 401).contains("secret"));
    }

    #[test]
    fn broken_credential_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, "{not json").unwrap();
        let opts = RegistryOptions {
            auth_file: Some(f),
            ..Default::default()
        };
        let e = lookup_with_env("h:1", "x", &opts, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.json") && e.contains("not valid JSON"),
            "{e}"
        );
        // Found by searching, it only shows when credentials are needed.
        let env =
            |k: &str| (k == "REGISTRY_AUTH_FILE").then(|| dir.path().join("auth.json").into());
        let opts = RegistryOptions::default();
        let hint = lookup_with_env("h:1", "x", &opts, &env)
            .unwrap()
            .hint("h:1", 401);
        assert!(
            hint.contains("skipped") && hint.contains("not valid JSON"),
            "{hint}"
        );
    }

    #[test]
    fn bearer_challenge_parameters_are_parsed() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("service"), Some("registry.example"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let c = parse_challenge(r#"Basic realm="x \"y\"", charset=UTF-8"#).unwrap();
        assert_eq!(
            (c.scheme.as_str(), c.param("realm")),
            ("basic", Some("x \"y\""))
        );
        assert_eq!(c.param("charset"), Some("UTF-8"));
        assert_eq!(parse_challenge("Basic").unwrap().params, vec![]);
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "LOCALHOST:80",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["ghcr.io", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
