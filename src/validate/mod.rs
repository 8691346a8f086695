//! Validation of root filesystems and images as a registry of named rules.
//!
//! Each rule ([`Rule`]) has a name, a one-line description, a default
//! severity and the kinds of tree it applies to ([`Kind`]); it walks the
//! tree itself (with `walkdir`, never following symlinks) and pushes
//! [`Finding`]s: rule name, severity, the path inside the tree (shown as
//! `/usr/...`) and a message. [`validate`] runs the rules a [`Selection`]
//! picks and returns a [`Report`] of everything found; a tree that breaks
//! several rules gets every finding in one run.
//!
//! | rule                 | applies to            | file            |
//! |----------------------|-----------------------|-----------------|
//! | `fhs`                | every kind            | `fhs.rs`        |
//! | `extension-layout`   | extension             | `extension.rs`  |
//! | `extension-manifest` | extension             | `extension.rs`  |
//! | `extension-paths`    | extension             | `paths.rs`      |
//! | `modules-signed`     | every kind            | `modules.rs`    |
//! | `modules-vermagic`   | every kind            | `modules.rs`    |
//! | `modules-depends`    | every kind            | `modules.rs`    |
//! | `no-secrets`         | every kind            | `secrets.rs`    |
//!
//! The module rules check against a kernel's build tree when the context
//! knows one for the release (`kernel_tree.rs` reads it, `symbols.rs`
//! reads a module's symbols as the module loader resolves them).
//!
//! Where paths point: for an extension image the root holds
//! `manifest.yaml` and `rootfs/`; findings inside `rootfs/` are shown
//! relative to it (`/usr/lib/...`, as Talos shows them, since that is where
//! the files land on a node), findings about the image itself relative to
//! the image root (`/manifest.yaml`). For a plain rootfs and a KMM kmod
//! image everything is relative to the root given.
//!
//! Invariants: rule names are unique and stable (users pass them to
//! `--rules`/`--skip`); a rule never fails the whole run because of one
//! entry it cannot read (that is a finding); only a root that cannot be
//! read, or a selection naming an unknown rule, is a [`ValidateError`].

pub mod extension;
pub mod fhs;
pub mod kernel_tree;
pub mod modules;
pub mod paths;
pub mod secrets;
pub mod symbols;
pub mod version;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;
use zeroize::Zeroizing;

pub use crate::diag::Severity;
use crate::diag::plural;
use crate::sign::verify::Trusted;
pub use kernel_tree::{KernelTree, KernelTreeError, find_kernel_trees};

/// What kind of tree is validated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A Talos system extension image: `manifest.yaml` and `rootfs/`.
    Extension,
    /// A plain root filesystem (a package's `/rootfs`, a build output).
    #[default]
    Rootfs,
    /// A KMM kmod image: modules under `/opt/lib/modules/<release>/`.
    #[serde(rename = "kmod")]
    KmodImage,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Extension, Kind::Rootfs, Kind::KmodImage];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Extension => "extension",
            Kind::Rootfs => "rootfs",
            Kind::KmodImage => "kmod",
        }
    }

    /// `Extension` when `root` holds a `manifest.yaml`, else `Rootfs`.
    pub fn detect(root: &Path) -> Kind {
        if root.join("manifest.yaml").symlink_metadata().is_ok() {
            Kind::Extension
        } else {
            Kind::Rootfs
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown kind `{s}`: expected extension, rootfs or kmod"))
    }
}

/// What the rules know beyond the tree itself.
#[derive(Clone, Default)]
pub struct Context {
    pub kind: Kind,
    /// The package the tree was built from; an extension's
    /// `metadata.name` must equal it (extensions-validator's `--pkg-name`).
    pub package: Option<String>,
    /// Certificates trusted to sign modules. Empty: `modules-signed` only
    /// checks that each signature is well-formed, and says so.
    pub trusted: Vec<Trusted>,
    /// Module dependencies that no module of the tree provides are not
    /// findings (a KMM image's `host` symlink to the node's modules, or an
    /// extension whose modules depend on the base kernel's).
    pub allow_in_tree_deps: bool,
    /// Exact byte strings that must occur nowhere in the tree (a signing
    /// session's private key, see `Session::secret_patterns_for_audit`).
    pub secret_patterns: Vec<Zeroizing<Vec<u8>>>,
    /// When set, `extension-manifest` also checks that
    /// `compatibility.talos.version` admits this Talos version.
    pub talos_version: Option<String>,
    /// The build trees of the kernels the modules are for, by release:
    /// `modules-vermagic` and `modules-depends` check the modules of a
    /// release directory against its tree (exact vermagic, every symbol
    /// exported). Add with [`Context::add_kernel_tree`].
    pub kernel_trees: BTreeMap<String, Arc<KernelTree>>,
}

impl Context {
    pub fn new(kind: Kind) -> Context {
        Context {
            kind,
            ..Context::default()
        }
    }

    /// Knows `tree` from now on; returns the tree it replaces, one for the
    /// same release.
    pub fn add_kernel_tree(&mut self, tree: KernelTree) -> Option<Arc<KernelTree>> {
        self.kernel_trees
            .insert(tree.release.clone(), Arc::new(tree))
    }

    /// The build tree of kernel `release`, if known.
    pub fn kernel_tree(&self, release: &str) -> Option<&KernelTree> {
        self.kernel_trees.get(release).map(|t| t.as_ref())
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("kind", &self.kind)
            .field("package", &self.package)
            .field("trusted", &self.trusted.len())
            .field("allow_in_tree_deps", &self.allow_in_tree_deps)
            // Never the bytes themselves.
            .field("secret_patterns", &self.secret_patterns.len())
            .field("talos_version", &self.talos_version)
            .field(
                "kernel_trees",
                &self
                    .kernel_trees
                    .values()
                    .map(|t| &t.dir)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Which rules run. The default runs every rule that applies to the kind.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only these rules (empty: all that apply).
    pub only: Vec<String>,
    /// Not these.
    pub skip: Vec<String>,
}

/// One problem: which rule, how bad, where, what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    /// Inside the tree, absolute-looking: `/usr/share/man`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}]: {}: {}",
            self.severity, self.rule, self.path, self.message
        )
    }
}

/// Everything one validation found, and which rules ran.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub rules_run: Vec<&'static str>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    pub fn has_warnings(&self) -> bool {
        self.warnings().next().is_some()
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// `3 rules run: 1 error, 2 warnings`.
    pub fn summary(&self) -> String {
        format!(
            "{} run: {}, {}",
            plural(self.rules_run.len(), "rule"),
            plural(self.errors().count(), "error"),
            plural(self.warnings().count(), "warning")
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("unknown rule `{name}`{}", match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => format!(" (rules: {})", rule_names().join(", ")),
    })]
    UnknownRule {
        name: String,
        suggestion: Option<&'static str>,
    },
    #[error("rule `{rule}` does not apply to {kind} trees")]
    NotApplicable { rule: &'static str, kind: Kind },
    #[error("Talos version `{version}`: {message}")]
    TalosVersion { version: String, message: String },
}

/// A named check over a tree.
pub trait Rule: Sync {
    fn name(&self) -> &'static str;
    /// One line, for `composer rules`.
    fn description(&self) -> &'static str;
    /// The severity of its findings unless a finding says otherwise.
    fn severity(&self) -> Severity;
    fn applies_to(&self) -> &'static [Kind];
    fn check(&self, tree: &Tree<'_>, ctx: &Context, out: &mut Sink);
}

static RULES: &[&dyn Rule] = &[
    &fhs::Fhs,
    &extension::Layout,
    &extension::Manifest,
    &paths::ExtensionPaths,
    &modules::Signed,
    &modules::Vermagic,
    &modules::Depends,
    &secrets::NoSecrets,
];

/// Every rule, in the order they run.
pub fn rules() -> &'static [&'static dyn Rule] {
    RULES
}

fn rule_names() -> Vec<&'static str> {
    RULES.iter().map(|r| r.name()).collect()
}

fn lookup(name: &str) -> Result<&'static dyn Rule, ValidateError> {
    RULES
        .iter()
        .copied()
        .find(|r| r.name() == name)
        .ok_or_else(|| ValidateError::UnknownRule {
            name: name.to_string(),
            suggestion: crate::diag::suggest(name, rule_names()),
        })
}

/// The rules `sel` picks for `kind`, in registry order. Every name must be
/// a rule; a rule named in `only` must apply to the kind.
pub fn select(kind: Kind, sel: &Selection) -> Result<Vec<&'static dyn Rule>, ValidateError> {
    for name in &sel.skip {
        lookup(name)?;
    }
    let mut only = Vec::new();
    for name in &sel.only {
        let rule = lookup(name)?;
        if !rule.applies_to().contains(&kind) {
            return Err(ValidateError::NotApplicable {
                rule: rule.name(),
                kind,
            });
        }
        only.push(rule.name());
    }
    Ok(RULES
        .iter()
        .copied()
        .filter(|r| r.applies_to().contains(&kind))
        .filter(|r| only.is_empty() || only.contains(&r.name()))
        .filter(|r| !sel.skip.iter().any(|s| s == r.name()))
        .collect())
}

/// Runs the selected rules over the tree at `root`.
pub fn validate(root: &Path, ctx: &Context, sel: &Selection) -> Result<Report, ValidateError> {
    let meta = std::fs::metadata(root).map_err(|source| ValidateError::Unreadable {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ValidateError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    std::fs::read_dir(root).map_err(|source| ValidateError::Unreadable {
        path: root.to_path_buf(),
        source,
    })?;
    if let Some(v) = &ctx.talos_version {
        version::parse_talos_version(v).map_err(|message| ValidateError::TalosVersion {
            version: v.clone(),
            message,
        })?;
    }
    let selected = select(ctx.kind, sel)?;
    let tree = Tree::new(root, ctx.kind);
    let mut report = Report::default();
    for rule in selected {
        let mut sink = Sink {
            rule: rule.name(),
            severity: rule.severity(),
            findings: Vec::new(),
        };
        rule.check(&tree, ctx, &mut sink);
        report.findings.extend(sink.findings);
        report.rules_run.push(rule.name());
    }
    Ok(report)
}

/// The tree under validation and where its parts are.
pub struct Tree<'a> {
    /// The path given.
    pub root: &'a Path,
    pub kind: Kind,
    /// The root filesystem part: `root/rootfs` for an extension, else
    /// `root`.
    pub fs_root: PathBuf,
}

impl<'a> Tree<'a> {
    pub fn new(root: &'a Path, kind: Kind) -> Tree<'a> {
        let fs_root = match kind {
            Kind::Extension => root.join("rootfs"),
            Kind::Rootfs | Kind::KmodImage => root.to_path_buf(),
        };
        Tree {
            root,
            kind,
            fs_root,
        }
    }

    /// Whether the filesystem part is a directory (an extension may lack
    /// `rootfs/`, which `extension-layout` reports).
    pub fn has_fs(&self) -> bool {
        self.fs_root
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_dir())
    }

    /// Where kernel modules live: `usr/lib/modules`, or `opt/lib/modules`
    /// in a KMM image.
    pub fn modules_dir(&self) -> PathBuf {
        match self.kind {
            Kind::KmodImage => self.fs_root.join("opt/lib/modules"),
            Kind::Extension | Kind::Rootfs => self.fs_root.join("usr/lib/modules"),
        }
    }

    /// How a path under the root is shown: relative to `rootfs/` for what
    /// lies inside an extension's rootfs, else relative to the root; always
    /// with a leading `/`.
    pub fn display(&self, path: &Path) -> String {
        let rel = path
            .strip_prefix(&self.fs_root)
            .or_else(|_| path.strip_prefix(self.root))
            .unwrap_or(path);
        display_rel(rel)
    }
}

/// `/a/b` for the relative path `a/b`, `/` for the empty path.
pub fn display_rel(rel: &Path) -> String {
    let mut out = String::new();
    for c in rel.components() {
        out.push('/');
        out.push_str(&c.as_os_str().to_string_lossy());
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Where a rule's findings go.
pub struct Sink {
    rule: &'static str,
    severity: Severity,
    findings: Vec<Finding>,
}

impl Sink {
    /// A finding with the rule's default severity.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let severity = self.severity;
        self.push_with(severity, path, message);
    }

    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push_with(Severity::Warning, path, message);
    }

    pub fn push_with(
        &mut self,
        severity: Severity,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            rule: self.rule,
            severity,
            path: path.into(),
            message: message.into(),
        });
    }

    /// An entry the walk could not read: always an error, since nothing
    /// can be said about what it holds.
    pub fn unreadable(&mut self, tree: &Tree<'_>, err: &walkdir::Error) {
        let path = err
            .path()
            .map(|p| tree.display(p))
            .unwrap_or_else(|| "/".to_string());
        let reason = err
            .io_error()
            .map(|e| e.to_string())
            .unwrap_or_else(|| err.to_string());
        self.push_with(Severity::Error, path, format!("cannot read: {reason}"));
    }
}

/// A walk of `dir` that never follows symlinks, in name order, so findings
/// come out in the same order every run.
pub fn walk(dir: &Path) -> walkdir::WalkDir {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
}

/// `path` relative to `base` as its normal components (names only).
pub fn components(base: &Path, path: &Path) -> Vec<String> {
    path.strip_prefix(base)
        .unwrap_or(path)
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_are_unique() {
        let mut names = rule_names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RULES.len());
    }

    #[test]
    fn unknown_rule_suggests_the_closest_name() {
        let sel = Selection {
            only: vec!["extension-path".into()],
            skip: vec![],
        };
        let err = select(Kind::Extension, &sel).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown rule `extension-path` (did you mean `extension-paths`?)")
        );
    }

    #[test]
    fn selection_keeps_only_applicable_rules_and_honours_skip() {
        let all = select(Kind::Rootfs, &Selection::default()).unwrap();
        assert!(all.iter().all(|r| !r.name().starts_with("extension-")));
        let sel = Selection {
            only: vec![],
            skip: vec!["fhs".into()],
        };
        let names: Vec<_> = select(Kind::Extension, &sel)
            .unwrap()
            .iter()
            .map(|r| r.name())
            .collect();
        assert!(!names.contains(&"fhs") && names.contains(&"extension-paths"));
        let sel = Selection {
            only: vec!["extension-paths".into()],
            skip: vec![],
        };
        assert!(matches!(
            select(Kind::Rootfs, &sel),
            Err(ValidateError::NotApplicable { .. })
        ));
    }

    #[test]
    fn finding_display_names_severity_rule_and_path() {
        let f = Finding {
            rule: "fhs",
            severity: Severity::Error,
            path: "/usr/share/man".into(),
            message: "forbidden".into(),
        };
        assert_eq!(f.to_string(), "error[fhs]: /usr/share/man: forbidden");
    }

    #[test]
    fn extension_paths_are_shown_relative_to_rootfs() {
        let tree = Tree::new(Path::new("/img"), Kind::Extension);
        assert_eq!(tree.display(Path::new("/img/rootfs/boot/x")), "/boot/x");
        assert_eq!(
            tree.display(Path::new("/img/manifest.yaml")),
            "/manifest.yaml"
        );
        assert_eq!(tree.display(Path::new("/img/rootfs")), "/");
    }
}
