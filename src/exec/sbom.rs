//! Software bills of materials: the SPDX 2.3 document each `sbom:` step of a
//! stage writes, how it is written into the stage's filesystem, and where it
//! lands in the output of a target built from that stage.
//!
//! As bldr does it: after a step's scripts, the document is written at the
//! step's `outputPath`, a path in the stage's filesystem (`/rootfs/…`);
//! `finalize` then carries it into the stage's output like any other file,
//! and dependency merges carry it on into dependants (an extension that
//! merges a module stage at `/rootfs` carries that stage's document). A
//! document describes:
//! - the package: `name` (default: the stage's name), `version`, the CPEs
//!   and the purl as external references, the licenses as one expression
//!   (each entry, sorted, joined with AND; custom and non-SPDX licenses as
//!   `LicenseRef-…` with their text);
//! - every source of the stage — of all its steps, as bldr lists them (the
//!   step with `sbom:` is often not the one that downloads) — as a package
//!   of its own that the package is `GENERATED_FROM`, with its SHA-256 and
//!   SHA-512 and its URL as download location (a `file://` URL, which SPDX
//!   does not take as one, is given as the source information instead).
//!
//! Everything comes from the definitions, so `composer sbom` prints the same
//! bytes without building. Reproducible: `created` is SOURCE_DATE_EPOCH
//! (else 1970-01-01T00:00:00Z), the namespace is derived from the content
//! (`spdx`), and each document's digest is part of its stage's cache key,
//! so a composer that writes documents differently rebuilds the stage.
//!
//! Writing never follows a symlink: the steps own the stage's filesystem,
//! and a link there must not send composer's write anywhere else.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::key::Fingerprint;
use super::spdx::{
    Checksum, CreationInfo, Document, ExternalRef, ExtractedLicense, NOASSERTION, Package,
    Relationship, spdx_id,
};
use crate::defs::load::Package as Stage;
use crate::defs::sbom::{license_ref, output_path_problem};
use crate::defs::schema::{License, Sbom, Source, Variant};
use crate::graph::Graph;

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("SOURCE_DATE_EPOCH {0} is not a time an SBOM can carry")]
    Epoch(i64),
    #[error("sbom outputPath `{path}` {problem}")]
    Path { path: String, problem: String },
    #[error("writing the SBOM to {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The document of one `sbom:` step of `stage`.
pub fn document(stage: &Stage, sbom: &Sbom, epoch: Option<i64>) -> Result<Vec<u8>, SbomError> {
    let epoch = epoch.unwrap_or(0);
    let created = time::OffsetDateTime::from_unix_timestamp(epoch)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .ok_or(SbomError::Epoch(epoch))?;
    let name = if sbom.name.is_empty() {
        stage.pkg.name.value.clone()
    } else {
        sbom.name.clone()
    };
    let main = main_package(&name, stage, sbom);
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".into(),
        relationship_type: "DESCRIBES".into(),
        related_spdx_element: main.spdx_id.clone(),
    }];
    let mut packages = vec![main];
    for (i, src) in stage.pkg.steps.iter().flat_map(|s| &s.sources).enumerate() {
        let source = source_package(i + 1, src);
        relationships.push(Relationship {
            spdx_element_id: packages[0].spdx_id.clone(),
            relationship_type: "GENERATED_FROM".into(),
            related_spdx_element: source.spdx_id.clone(),
        });
        packages.push(source);
    }
    let doc = Document {
        spdx_id: "SPDXRef-DOCUMENT".into(),
        spdx_version: "SPDX-2.3".into(),
        data_license: "CC0-1.0".into(),
        name: match sbom.version.as_str() {
            "" => name,
            v => format!("{name}-{v}"),
        },
        document_namespace: String::new(),
        creation_info: CreationInfo {
            created,
            creators: vec![format!("Tool: composer-{}", env!("CARGO_PKG_VERSION"))],
            license_list_version: license_list_version(),
        },
        packages,
        relationships,
        has_extracted_licensing_infos: extracted(sbom),
    };
    Ok(doc.to_bytes())
}

/// The document of one `sbom:` step.
pub struct StepDocument<'s> {
    /// The step, 1-based.
    pub step: usize,
    pub sbom: &'s Sbom,
    pub bytes: Vec<u8>,
}

/// The documents of every `sbom:` step of `stage`, in step order.
pub fn documents(stage: &Stage, epoch: Option<i64>) -> Result<Vec<StepDocument<'_>>, SbomError> {
    let mut out = Vec::new();
    for (i, step) in stage.pkg.steps.iter().enumerate() {
        if let Some(sbom) = &step.sbom {
            out.push(StepDocument {
                step: i + 1,
                sbom,
                bytes: document(stage, sbom, epoch)?,
            });
        }
    }
    Ok(out)
}

/// Adds the digest of each document to a stage's cache key.
pub fn fingerprint(
    fp: &mut Fingerprint,
    stage: &Stage,
    epoch: Option<i64>,
) -> Result<(), SbomError> {
    for d in documents(stage, epoch)? {
        fp.add(
            format!("step {} sbom", d.step),
            format!("sha256:{}", hex::encode(Sha256::digest(&d.bytes))),
        );
    }
    Ok(())
}

fn main_package(name: &str, stage: &Stage, sbom: &Sbom) -> Package {
    let mut p = Package::new(spdx_id("Package", name), name.to_string());
    p.version_info = (!sbom.version.is_empty()).then(|| sbom.version.clone());
    p.supplier = Some(NOASSERTION.into());
    p.license_declared = declared(sbom);
    p.source_info = Some(format!(
        "built by composer from stage {}",
        stage.pkg.name.value
    ));
    for cpe in &sbom.cpes {
        p.external_refs.push(ExternalRef {
            reference_category: "SECURITY".into(),
            reference_type: "cpe23Type".into(),
            reference_locator: cpe.clone(),
        });
    }
    if !sbom.purl.is_empty() {
        p.external_refs.push(ExternalRef {
            reference_category: "PACKAGE-MANAGER".into(),
            reference_type: "purl".into(),
            reference_locator: sbom.purl.clone(),
        });
    }
    p
}

fn source_package(n: usize, src: &Source) -> Package {
    let mut p = Package::new(spdx_id("Source", &n.to_string()), src.destination.clone());
    let scheme = src
        .url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("http" | "https" | "ftp")) {
        p.download_location = src.url.clone();
    } else {
        p.source_info = Some(format!("fetched from {}", src.url));
    }
    p.checksums = vec![
        Checksum {
            algorithm: "SHA256".into(),
            checksum_value: src.sha256.to_ascii_lowercase(),
        },
        Checksum {
            algorithm: "SHA512".into(),
            checksum_value: src.sha512.to_ascii_lowercase(),
        },
    ];
    p.primary_package_purpose = Some("SOURCE".into());
    p
}

/// The declared license: every entry, sorted and deduplicated, joined with
/// AND (compound expressions in parentheses); NOASSERTION when none.
fn declared(sbom: &Sbom) -> String {
    let mut terms: Vec<String> = sbom
        .licenses
        .iter()
        .map(|l| match l {
            License::Expression(e) => e.clone(),
            License::Name(n) => license_ref(n),
        })
        .chain(sbom.custom_licenses.iter().map(|(id, _)| id.clone()))
        .collect();
    terms.sort();
    terms.dedup();
    if terms.is_empty() {
        return NOASSERTION.into();
    }
    let several = terms.len() > 1;
    terms
        .into_iter()
        .map(|t| {
            if several && t.contains(char::is_whitespace) {
                format!("({t})")
            } else {
                t
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn extracted(sbom: &Sbom) -> Vec<ExtractedLicense> {
    let mut out: Vec<ExtractedLicense> = sbom
        .licenses
        .iter()
        .filter_map(|l| match l {
            License::Name(n) => Some(ExtractedLicense {
                license_id: license_ref(n),
                extracted_text: n.clone(),
                name: n.clone(),
            }),
            License::Expression(_) => None,
        })
        .chain(
            sbom.custom_licenses
                .iter()
                .map(|(id, text)| ExtractedLicense {
                    license_id: id.clone(),
                    extracted_text: text.clone(),
                    name: id.trim_start_matches("LicenseRef-").to_string(),
                }),
        )
        .collect();
    out.sort_by(|a, b| a.license_id.cmp(&b.license_id));
    out.dedup_by(|a, b| a.license_id == b.license_id);
    out
}

/// `M.N` of the SPDX license list the `spdx` crate carries.
fn license_list_version() -> String {
    spdx::license_version()
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

/// Writes `bytes` at `output_path` of a stage of `variant` whose filesystem
/// is `root` and whose `/tmp/build` is `build`. Returns the file written.
/// The path's own rules were checked when the definitions loaded
/// ([`output_path_problem`]); they are checked again here, as a caller may
/// not have loaded them.
pub fn write(
    root: &Path,
    build: &Path,
    variant: Variant,
    output_path: &str,
    bytes: &[u8],
) -> Result<PathBuf, SbomError> {
    let bad = |problem: &str| SbomError::Path {
        path: output_path.to_string(),
        problem: problem.to_string(),
    };
    if let Some(problem) = output_path_problem(output_path, variant) {
        return Err(bad(&problem));
    }
    let parts: Vec<&str> = Path::new(output_path)
        .components()
        .map(|c| match c {
            Component::Normal(n) => n.to_str().ok_or_else(|| bad("is not UTF-8")),
            _ => Ok(""),
        })
        .filter(|p| !matches!(p, Ok("")))
        .collect::<Result<_, _>>()?;
    let (base, parts) = match parts.as_slice() {
        ["tmp", "build", rest @ ..] => (build, rest),
        all => (root, all),
    };
    let Some((file, dirs)) = parts.split_last() else {
        return Err(bad("names no file"));
    };
    let mut dir = base.to_path_buf();
    for d in dirs {
        dir.push(d);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad(&format!(
                    "goes through a symlink: `{d}` is a symlink in the stage's filesystem, and the SBOM is written only through real directories"
                )));
            }
            Ok(_) => {
                return Err(bad(&format!(
                    "goes through `{d}`, which is not a directory"
                )));
            }
            Err(_) => fs::create_dir(&dir).map_err(|source| SbomError::Io {
                path: dir.clone(),
                source,
            })?,
        }
    }
    let path = dir.join(file);
    if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
        return Err(bad("is a directory"));
    }
    let io = |source| SbomError::Io {
        path: path.clone(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    Ok(path)
}

/// A document a target's output carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carried {
    /// The stage whose step wrote it.
    pub stage: String,
    /// The step (1-based).
    pub step: usize,
    /// Where it is in the target's output (absolute).
    pub path: String,
}

/// The documents `target`'s output holds, following each document from the
/// step that wrote it through `finalize` and every dependency merge
/// (`from` → `to`) up to the target. What a step's script does with the
/// file (moves it, deletes it) is not followed.
pub fn carried(graph: &Graph<'_>, target: &Stage) -> Vec<Carried> {
    let mut visiting = Vec::new();
    in_output(graph, target, &mut visiting)
}

fn in_output<'d>(graph: &Graph<'d>, stage: &'d Stage, visiting: &mut Vec<&'d str>) -> Vec<Carried> {
    let name = stage.pkg.name.value.as_str();
    if visiting.contains(&name) {
        return Vec::new();
    }
    visiting.push(name);
    let mut in_root: Vec<Carried> = stage
        .pkg
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.sbom.as_ref().map(|sbom| Carried {
                stage: name.to_string(),
                step: i + 1,
                path: sbom.output_path.clone(),
            })
        })
        .collect();
    for input in graph.inputs(stage) {
        let Some(dep) = input.what.strip_prefix("stage:").and_then(|d| graph.get(d)) else {
            continue;
        };
        for c in in_output(graph, dep, visiting) {
            if let Some(path) = moved(&c.path, &input.from, &input.to) {
                push_new(&mut in_root, Carried { path, ..c });
            }
        }
    }
    visiting.pop();
    let mut out = Vec::new();
    for f in &stage.pkg.finalize {
        let from = f.from.trim_start_matches('/');
        if from == "pkg" || from.starts_with("pkg/") {
            continue;
        }
        for c in &in_root {
            if let Some(path) = moved(&c.path, &f.from, &f.to) {
                push_new(&mut out, Carried { path, ..c.clone() });
            }
        }
    }
    out
}

fn push_new(list: &mut Vec<Carried>, c: Carried) {
    if !list.contains(&c) {
        list.push(c);
    }
}

/// Where `path` lands when `from` is copied to `to` (bldr's merge: a
/// directory's contents into `to`, a file at `to`, or inside it when `to`
/// is written as a directory).
fn moved(path: &str, from: &str, to: &str) -> Option<String> {
    let clean = |p: &str| {
        p.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect::<Vec<_>>()
            .join("/")
    };
    let (path, from, to_clean) = (clean(path), clean(from), clean(to));
    let rel = if from.is_empty() {
        path.clone()
    } else if path == from {
        if to_clean.is_empty() || to.ends_with('/') {
            path.rsplit('/').next().unwrap_or(&path).to_string()
        } else {
            String::new()
        }
    } else {
        path.strip_prefix(&format!("{from}/"))?.to_string()
    };
    Some(match (to_clean.is_empty(), rel.is_empty()) {
        (true, _) => format!("/{rel}"),
        (false, true) => format!("/{to_clean}"),
        (false, false) => format!("/{to_clean}/{rel}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_follows_bldr_merge_rules() {
        let p = "/rootfs/usr/local/share/spdx/a.spdx.json";
        assert_eq!(
            moved(p, "/rootfs", "/").as_deref(),
            Some("/usr/local/share/spdx/a.spdx.json")
        );
        assert_eq!(
            moved("/usr/local/share/spdx/a.spdx.json", "/", "/rootfs").as_deref(),
            Some(p)
        );
        assert_eq!(moved(p, "/rootfs/usr/lib", "/"), None);
        assert_eq!(moved(p, "/root", "/"), None, "component boundaries");
        assert_eq!(moved(p, p, "/sbom.json").as_deref(), Some("/sbom.json"));
        assert_eq!(moved(p, p, "/out/").as_deref(), Some("/out/a.spdx.json"));
    }

    #[test]
    fn write_refuses_to_follow_a_symlink_out_of_the_stage() {
        let t = tempfile::tempdir().unwrap();
        let (root, build, outside) = (
            t.path().join("root"),
            t.path().join("build"),
            t.path().join("outside"),
        );
        for d in [&root, &build, &outside] {
            fs::create_dir(d).unwrap();
        }
        std::os::unix::fs::symlink(&outside, root.join("rootfs")).unwrap();
        let e = write(
            &root,
            &build,
            Variant::Scratch,
            "/rootfs/x.spdx.json",
            b"{}",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`rootfs` is a symlink"), "{e}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        std::os::unix::fs::symlink(outside.join("f"), root.join("f.json")).unwrap();
        assert!(write(&root, &build, Variant::Scratch, "/f.json", b"{}").is_err());
        assert!(!outside.join("f").exists());
    }

    #[test]
    fn write_maps_tmp_build_and_refuses_sandbox_directories() {
        let t = tempfile::tempdir().unwrap();
        let (root, build) = (t.path().join("root"), t.path().join("build"));
        fs::create_dir(&root).unwrap();
        fs::create_dir(&build).unwrap();
        let p = write(&root, &build, Variant::Scratch, "/tmp/build/s/a.json", b"x").unwrap();
        assert_eq!(p, build.join("s/a.json"));
        for bad in ["/pkg/a.json", "/proc/a", "/tmp/a.json", "/"] {
            assert!(
                write(&root, &build, Variant::Scratch, bad, b"x").is_err(),
                "{bad}"
            );
        }
        assert!(write(&root, &build, Variant::Host, "/usr/a.json", b"x").is_err());
        assert!(write(&root, &build, Variant::Scratch, "/usr/a.json", b"x").is_ok());
    }
}
