//! Image references, written like skopeo's transports:
//!
//! | form                                  | meaning                                   |
//! |---------------------------------------|-------------------------------------------|
//! | `oci:DIR[:TAG]`                       | an OCI image layout directory             |
//! | `oci-archive:FILE[:TAG]`              | a tar of an OCI image layout              |
//! | `docker-archive:FILE[:NAME:TAG]`      | a `docker save` tarball                   |
//! | `[docker://]HOST[:PORT]/REPO[:TAG][@sha256:HEX]` | an image in a registry         |
//!
//! Registry references follow Docker's rules: the first path component is
//! a registry host when it contains `.` or `:` or is `localhost`; otherwise
//! the registry is `docker.io` and one-component names get `library/`.
//! Without tag or digest the tag is `latest`.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("image reference `{reference}`: {message}")]
pub struct ReferenceError {
    pub reference: String,
    pub message: String,
}

/// Where an image is read from or written to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    Layout { dir: PathBuf, tag: Option<String> },
    OciArchive { path: PathBuf, tag: Option<String> },
    DockerArchive { path: PathBuf, name: Option<String> },
    Registry(RegistryRef),
}

/// An image in an OCI distribution registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]`, e.g. `127.0.0.1:5000` or `ghcr.io`.
    pub registry: String,
    /// `org/name`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl RegistryRef {
    /// The tag or digest used in `/v2/<repo>/manifests/<reference>`: the
    /// digest when there is one, else the tag (`latest` when absent).
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> RegistryRef {
        RegistryRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with = |f: &mut fmt::Formatter<'_>, t: &str, p: &PathBuf, s: &Option<String>| {
            write!(f, "{t}:{}", p.display())?;
            match s {
                Some(s) => write!(f, ":{s}"),
                None => Ok(()),
            }
        };
        match self {
            ImageRef::Layout { dir, tag } => with(f, "oci", dir, tag),
            ImageRef::OciArchive { path, tag } => with(f, "oci-archive", path, tag),
            ImageRef::DockerArchive { path, name } => with(f, "docker-archive", path, name),
            ImageRef::Registry(r) => write!(f, "{r}"),
        }
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |message: &str| ReferenceError {
            reference: s.to_string(),
            message: message.to_string(),
        };
        let split_path = |rest: &str| -> Result<(PathBuf, Option<String>), ReferenceError> {
            if rest.is_empty() {
                return Err(err("the path is empty"));
            }
            // The suffix after the last ':' is a tag when it has no '/'.
            match rest.split_once(':') {
                Some((p, t)) if !p.is_empty() && !t.is_empty() && !t.contains('/') => {
                    Ok((PathBuf::from(p), Some(t.to_string())))
                }
                Some((p, t)) if p.is_empty() || t.is_empty() => Err(err("expected PATH[:TAG]")),
                _ => Ok((PathBuf::from(rest), None)),
            }
        };
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_path(rest)?;
            return Ok(ImageRef::Layout { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, tag) = split_path(rest)?;
            return Ok(ImageRef::OciArchive { path, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(err("the path is empty"));
            }
            let (path, name) = match rest.split_once(':') {
                Some((p, n)) if !n.is_empty() => (PathBuf::from(p), Some(n.to_string())),
                _ => (PathBuf::from(rest), None),
            };
            return Ok(ImageRef::DockerArchive { path, name });
        }
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        if let Some((transport, _)) = rest.split_once(':')
            && !transport.contains('/')
            && !transport.contains('.')
            && transport != "localhost"
            && rest.contains("://")
        {
            return Err(err(
                "unknown transport (use oci:, oci-archive:, docker-archive: or a registry reference)",
            ));
        }
        parse_registry(rest)
            .map(ImageRef::Registry)
            .map_err(|m| err(&m))
    }
}

/// Parses `HOST[:PORT]/REPO[:TAG][@DIGEST]` (see the module doc).
pub fn parse_registry(s: &str) -> Result<RegistryRef, String> {
    if s.is_empty() {
        return Err("the reference is empty".into());
    }
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("digest `{d}` must be sha256:<64 hex>"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("digest `{d}` must be sha256:<64 hex>"));
            }
            (n, Some(d.to_ascii_lowercase()))
        }
        None => (s, None),
    };
    // A tag is after the last ':' that follows the last '/'.
    let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], Some(name[slash + i + 1..].to_string())),
        None => (name, None),
    };
    if let Some(t) = &tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !t.starts_with(['.', '-']);
        if !ok {
            return Err(format!("invalid tag `{t}`"));
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        Some(_) => ("docker.io".to_string(), name.to_string()),
        None => ("docker.io".to_string(), format!("library/{name}")),
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    if !repository.split('/').all(component_ok) {
        return Err(format!(
            "invalid repository `{repository}` (lowercase letters, digits, `._-`, separated by `/`)"
        ));
    }
    let tag = if tag.is_none() && digest.is_none() {
        Some("latest".to_string())
    } else {
        tag
    };
    Ok(RegistryRef {
        registry,
        repository,
        tag,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match s.parse::<ImageRef>().unwrap() {
            ImageRef::Registry(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transports_parse_like_skopeo() {
        assert_eq!(
            "oci:_out/hello:1.0.0".parse::<ImageRef>().unwrap(),
            ImageRef::Layout {
                dir: "_out/hello".into(),
                tag: Some("1.0.0".into())
            }
        );
        assert_eq!(
            "oci:/a/b".parse::<ImageRef>().unwrap(),
            ImageRef::Layout {
                dir: "/a/b".into(),
                tag: None
            }
        );
        assert!(matches!(
            "docker-archive:x.tar".parse::<ImageRef>().unwrap(),
            ImageRef::DockerArchive { name: None, .. }
        ));
        assert!("oci:".parse::<ImageRef>().is_err());
        assert!("ftp://x/y".parse::<ImageRef>().is_err());
    }

    #[test]
    fn registry_references_follow_docker_rules() {
        let r = reg("127.0.0.1:5000/composer/hello:1.0.0");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "composer/hello");
        assert_eq!(r.tag.as_deref(), Some("1.0.0"));
        let r = reg("alpine");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/alpine")
        );
        assert_eq!(r.manifest_reference(), "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = reg(&format!("docker://localhost/x@{d}"));
        assert_eq!(r.manifest_reference(), d);
        assert!(r.tag.is_none());
        assert!("ghcr.io/Upper/x".parse::<ImageRef>().is_err());
        assert!("ghcr.io/x@sha256:12".parse::<ImageRef>().is_err());
    }
}
