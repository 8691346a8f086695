//! The definition types: what a Pkgfile and a `pkg.yaml` say, as pure data.
//!
//! These mirror bldr v1alpha2 (v0.6.3) field for field; `pkg.rs` fills them
//! from YAML and `check.rs` validates them. Fields keep their `Span` where a
//! later phase (graph, build) may need to point back at the source.
//!
//! Invariant: nothing here reads files or renders templates.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::diag::Span;
pub use crate::diag::Spanned;

/// The Pkgfile at the top of a root.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pkgfile {
    pub format: String,
    pub labels: BTreeMap<String, String>,
}

/// How a stage's filesystem starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Alpine Linux as the base, with `install` packages added.
    Alpine,
    /// An empty base.
    Scratch,
    /// composer only: the host's root filesystem, read-only.
    Host,
}

/// Host directories (or their symlinks) a `variant: host` stage sees
/// read-only. `/home`, `/root`, `/tmp`, `/var`, `/run` and the rest are not
/// shared: they stay the stage's own.
pub const HOST_DIRS: [&str; 9] = [
    "bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "opt",
];

impl Variant {
    pub const NAMES: [&'static str; 3] = ["alpine", "scratch", "host"];

    pub fn parse(s: &str) -> Option<Variant> {
        match s {
            "alpine" => Some(Variant::Alpine),
            "scratch" => Some(Variant::Scratch),
            "host" => Some(Variant::Host),
            _ => None,
        }
    }
}

/// What a dependency brings in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyKind {
    /// Another stage of the definitions, by name.
    Stage(String),
    /// A container image reference.
    Image(String),
}

#[derive(Clone, Debug, Serialize)]
pub struct Dependency {
    pub kind: DependencyKind,
    /// Path copied from the dependency's filesystem (default `/`).
    pub from: String,
    /// Where it lands in the dependant's filesystem (default `/`).
    pub to: String,
    /// Platform of an image dependency (default: the build's platform).
    pub platform: Option<String>,
    /// Also merged into every stage that depends on the dependant.
    pub runtime: bool,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub struct Source {
    pub url: String,
    pub destination: String,
    pub sha256: String,
    pub sha512: String,
    #[serde(skip)]
    pub span: Span,
}

/// `network:` of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    None,
    Default,
    Host,
}

/// One `licenses` entry of a step's `sbom`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum License {
    /// An SPDX license expression, as written.
    Expression(String),
    /// A lone word that is no SPDX identifier (`CUSTOM`): written as
    /// `LicenseRef-<word>` with the word as its text, as bldr does.
    Name(String),
}

/// A step's `sbom`: the SPDX document the step writes at `output_path`
/// (a path in the stage's filesystem) after its scripts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sbom {
    pub output_path: String,
    /// Empty: the stage's name.
    pub name: String,
    pub version: String,
    pub cpes: Vec<String>,
    pub purl: String,
    pub licenses: Vec<License>,
    /// `customLicenses`: (`LicenseRef-…` id, text) pairs.
    pub custom_licenses: Vec<(String, String)>,
}

/// One step: sources, then prepare, build, install, test script items.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Step {
    pub sources: Vec<Source>,
    /// In file order; later steps inherit earlier steps' environment.
    pub env: Vec<(String, String)>,
    pub cache_paths: Vec<String>,
    pub network: Option<Network>,
    pub prepare: Vec<String>,
    pub build: Vec<String>,
    pub install: Vec<String>,
    pub test: Vec<String>,
    pub sbom: Option<Sbom>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finalize {
    pub from: String,
    pub to: String,
}

/// One stage, from one `pkg.yaml`.
#[derive(Clone, Debug, Serialize)]
pub struct Pkg {
    pub name: Spanned<String>,
    pub variant: Variant,
    /// `shell:` as written; `None` takes the default where the steps run
    /// (bldr's `/bin/sh`, or the host's bash for `variant: host`).
    pub shell: Option<String>,
    /// `buildPlatform`: the platform the steps run on, when not the target's.
    pub build_platform: Option<String>,
    /// Packages installed into an `alpine` base.
    pub install: Vec<String>,
    pub dependencies: Vec<Dependency>,
    pub steps: Vec<Step>,
    pub finalize: Vec<Finalize>,
    /// The directory holding `pkg.yaml`.
    pub dir: PathBuf,
}

impl Pkg {
    /// Names of the stages this one depends on directly.
    pub fn stage_deps(&self) -> impl Iterator<Item = (&str, &Dependency)> {
        self.dependencies.iter().filter_map(|d| match &d.kind {
            DependencyKind::Stage(s) => Some((s.as_str(), d)),
            DependencyKind::Image(_) => None,
        })
    }
}
