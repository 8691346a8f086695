//! `composer new kmod NAME`: an out-of-tree kernel module and its system
//! extension, from `templates/kmod/`:
//!
//! | written                                        | from                                  |
//! | ---------------------------------------------- | ------------------------------------- |
//! | `<pkgs>/NAME-pkg/pkg.yaml` (stage `NAME-pkg`)  | `pkgs/pkg.yaml.in`                    |
//! | `<pkgs>/Pkgfile` vars `NAME_version/_sha256/_sha512` | `pkgs/Pkgfile.vars.in`          |
//! | `<extensions>/drivers/NAME/{pkg.yaml,vars.yaml,manifest.yaml.tmpl}` | `extensions/*.in` |
//! | `<extensions>/Pkgfile` var `NAME_VERSION`      | `extensions/Pkgfile.vars.in`          |
//!
//! (`NAME` in variable names with `-` as `_`, upper case in the extensions
//! Pkgfile.) The module stage depends on `kernel-build`, fetches the source
//! with both checksums and installs the stripped, unsigned `.ko` under
//! `/usr/lib/modules/<release>/extra`; composer signs them at build time.
//! Both make calls use the module directory `source.rs` finds in the
//! source archive (or `--module-dir`; the source top when unchecked).
//!
//! Invariant: `plan` reads and checks, never writes; the `Plan` it returns
//! is what `Plan::apply` writes.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use gotmpl::Value;
use regex::Regex;

use super::pkgfile::{add_vars, read_vars};
use super::source::{ModuleDir, SourceArgs, module_dir};
use super::{Change, Plan, ScaffoldError};
use crate::defs::template::render_scaffold;
use crate::defs::{LoadOptions, Platform, Vars, load};
use crate::diag::display_path;
use crate::validate::version::{version_format, version_formats};

const PKG: &str = include_str!("../../templates/kmod/pkgs/pkg.yaml.in");
const PKG_VARS: &str = include_str!("../../templates/kmod/pkgs/Pkgfile.vars.in");
const EXT_PKG: &str = include_str!("../../templates/kmod/extensions/pkg.yaml.in");
const EXT_VARS: &str = include_str!("../../templates/kmod/extensions/vars.yaml.in");
const EXT_MANIFEST: &str = include_str!("../../templates/kmod/extensions/manifest.yaml.tmpl.in");
const EXT_PKGFILE_VARS: &str = include_str!("../../templates/kmod/extensions/Pkgfile.vars.in");

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$").expect("constant pattern"));
static VERSION_IN_URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9]+(?:\.[0-9]+)+").expect("constant pattern"));
static VERSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$").expect("constant pattern"));

/// Archive suffixes kept for the downloaded file's name.
const ARCHIVES: &[&str] = &[
    ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar.zst", ".tar",
];

/// What `composer new kmod` was asked for.
#[derive(Clone, Debug)]
pub struct KmodRequest {
    pub name: String,
    /// The source archive: `https://`, `http://` or `file://`.
    pub source: String,
    pub sha256: String,
    pub sha512: String,
    /// Default: the first `N.N[.N...]` in the URL's file name.
    pub version: Option<String>,
    /// Default: the GitHub owner of the source, else its host.
    pub author: Option<String>,
    pub description: Option<String>,
    pub pkgs_root: PathBuf,
    pub extensions_root: PathBuf,
    /// The source archive itself, checked against both digests.
    pub source_file: Option<PathBuf>,
    /// A directory holding the archive as `<sha256>` or its file name.
    pub source_mirror: Option<PathBuf>,
    /// The module's directory in the unpacked source (`--module-dir`).
    pub module_dir: Option<String>,
}

/// The checked result: what to write, and names for the next steps.
#[derive(Clone, Debug)]
pub struct Kmod {
    pub plan: Plan,
    /// `NAME-pkg`, the module stage.
    pub stage: String,
    /// `NAME`, the extension.
    pub extension: String,
    pub version: String,
    pub author: String,
    pub module_dir: ModuleDir,
}

/// Checks the request against the arguments' rules and the trees, and
/// renders every file. Writes nothing.
pub fn plan(req: &KmodRequest) -> Result<Kmod, ScaffoldError> {
    let mut invalid = Vec::new();
    check_name(&req.name, &mut invalid);
    check_url(&req.source, &mut invalid);
    let sha256 = check_digest("--sha256", &req.sha256, 64, &mut invalid);
    let sha512 = check_digest("--sha512", &req.sha512, 128, &mut invalid);
    let version = match &req.version {
        Some(v) => Some(v.clone()),
        None => version_from_url(&req.source),
    };
    match &version {
        None => invalid.push(format!(
            "cannot tell the version from the source URL {}: give it with --version",
            req.source
        )),
        Some(v) => check_version(v, &mut invalid),
    }
    for (flag, text) in [
        ("--author", &req.author),
        ("--description", &req.description),
    ] {
        if text
            .as_deref()
            .is_some_and(|t| t.contains("{{") || t.contains("}}"))
        {
            invalid.push(format!(
                "{flag}: must not contain `{{{{` or `}}}}` (template actions)"
            ));
        }
    }
    let pkgfiles = [
        ("--root-pkgs", &req.pkgs_root),
        ("--root-extensions", &req.extensions_root),
    ]
    .map(|(flag, dir)| read_pkgfile(flag, dir, &mut invalid));
    if !invalid.is_empty() {
        return Err(ScaffoldError::Invalid(invalid));
    }
    let version = version.unwrap_or_default();
    let module = module_dir(&SourceArgs {
        url: &req.source,
        sha256: &sha256,
        sha512: &sha512,
        file: req.source_file.as_deref(),
        mirror: req.source_mirror.as_deref(),
        module_dir: req.module_dir.as_deref(),
    })
    .map_err(ScaffoldError::Invalid)?;
    let [
        Some((pkgs_pkgfile, pkgs_text)),
        Some((ext_pkgfile, ext_text)),
    ] = pkgfiles
    else {
        return Err(ScaffoldError::Invalid(vec![
            "the roots have no Pkgfile".into(),
        ]));
    };

    let name = req.name.as_str();
    let stage = format!("{name}-pkg");
    let ident = name.replace('-', "_");
    let upper = ident.to_uppercase();
    let pkg_file = req.pkgs_root.join(&stage).join("pkg.yaml");
    let ext_dir = req.extensions_root.join("drivers").join(name);
    let pkg_vars_added = [
        (format!("{ident}_version"), version.clone()),
        (format!("{ident}_sha256"), sha256.clone()),
        (format!("{ident}_sha512"), sha512.clone()),
    ];
    let ext_vars_added = [(format!("{upper}_VERSION"), version.clone())];

    // Conflicts: files, stage names, Pkgfile variables.
    let mut conflicts = Vec::new();
    let files = [
        pkg_file.clone(),
        ext_dir.join("pkg.yaml"),
        ext_dir.join("vars.yaml"),
        ext_dir.join("manifest.yaml.tmpl"),
    ];
    for f in &files {
        if f.symlink_metadata().is_ok() {
            conflicts.push(format!("file {}", display_path(f).display()));
        } else if let Some(d) = f
            .ancestors()
            .skip(1)
            .find(|d| d.symlink_metadata().is_ok_and(|m| !m.is_dir()))
        {
            let what = format!("{} (not a directory)", display_path(d).display());
            if !conflicts.contains(&what) {
                conflicts.push(what);
            }
        }
    }
    stage_conflicts(req, &[stage.as_str(), name], &mut conflicts);
    for (file, text, added) in [
        (&pkgs_pkgfile, &pkgs_text, &pkg_vars_added[..]),
        (&ext_pkgfile, &ext_text, &ext_vars_added[..]),
    ] {
        match read_vars(file, text) {
            Ok(vars) => {
                for (k, _) in added.iter().filter(|(k, _)| vars.contains(k)) {
                    conflicts.push(format!("variable {k} in {}", display_path(file).display()));
                }
            }
            Err(problems) => {
                return Err(ScaffoldError::Invalid(
                    problems
                        .into_iter()
                        .map(|p| format!("{p} (fix the Pkgfile first)"))
                        .collect(),
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(ScaffoldError::Conflicts(conflicts));
    }

    // Render.
    let author = req
        .author
        .clone()
        .unwrap_or_else(|| default_author(&req.source));
    let description = req
        .description
        .clone()
        .unwrap_or_else(|| format!("The {name} out-of-tree kernel module."));
    let mut vars = Vars::default();
    let mut set = |k: &str, v: String| vars.set(k, Value::String(v.into()));
    set("name", name.to_string());
    set("stage", stage.clone());
    set("ident", ident.clone());
    set("upper", upper.clone());
    set("version", version.clone());
    set("sha256", sha256.clone());
    set("sha512", sha512.clone());
    set("source", req.source.clone());
    set("url", url_template(&req.source, &version, &ident));
    set("destination", destination(name, &req.source));
    set("strip", module.strip.to_string());
    set("module_path", module.make_path());
    set("module_comment", module.comment().join("\n        "));
    set("renovate", renovate(&req.source, &version));
    set(
        "author",
        serde_json::to_string(author.trim()).unwrap_or_default(),
    );
    set("description", indent(description.trim(), "    "));
    let render = |file: &str, src: &str| {
        render_scaffold(file, src, &vars).map_err(|e| ScaffoldError::Template {
            name: file.to_string(),
            message: e.to_string(),
        })
    };
    let entries = |text: String| -> Vec<String> { text.lines().map(str::to_string).collect() };
    let pkgs_entries = entries(render("kmod/pkgs/Pkgfile.vars.in", PKG_VARS)?);
    let ext_entries = entries(render("kmod/extensions/Pkgfile.vars.in", EXT_PKGFILE_VARS)?);
    let edit = |file: &Path, text: &str, entries: &[String], added: &[(String, String)]| {
        add_vars(file, text, entries, added)
            .map(|after| Change::Edit {
                path: file.to_path_buf(),
                before: text.to_string(),
                after,
                added: added
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
            .map_err(|e| {
                ScaffoldError::Invalid(vec![format!("{}: {e}", display_path(file).display())])
            })
    };
    let changes = vec![
        Change::Create {
            path: pkg_file,
            contents: render("kmod/pkgs/pkg.yaml.in", PKG)?,
        },
        Change::Create {
            path: ext_dir.join("pkg.yaml"),
            contents: render("kmod/extensions/pkg.yaml.in", EXT_PKG)?,
        },
        Change::Create {
            path: ext_dir.join("vars.yaml"),
            contents: render("kmod/extensions/vars.yaml.in", EXT_VARS)?,
        },
        Change::Create {
            path: ext_dir.join("manifest.yaml.tmpl"),
            contents: render("kmod/extensions/manifest.yaml.tmpl.in", EXT_MANIFEST)?,
        },
        edit(&pkgs_pkgfile, &pkgs_text, &pkgs_entries, &pkg_vars_added)?,
        edit(&ext_pkgfile, &ext_text, &ext_entries, &ext_vars_added)?,
    ];
    Ok(Kmod {
        plan: Plan { changes },
        stage,
        extension: name.to_string(),
        version,
        author,
        module_dir: module,
    })
}

fn check_name(name: &str, invalid: &mut Vec<String>) {
    if name.contains(['/', '\\']) || name == "." || name == ".." {
        invalid.push(format!(
            "name `{name}`: a name, not a path (no `/`): it becomes pkgs/<name>-pkg and extensions/drivers/<name>"
        ));
    } else if !NAME.is_match(name) || name.len() > 63 {
        invalid.push(format!(
            "name `{name}`: use lowercase letters, digits and single hyphens, starting with a letter, at most 63 characters (like `my-driver`)"
        ));
    } else if let Some(base) = name.strip_suffix("-pkg") {
        invalid.push(format!(
            "name `{name}`: give it without `-pkg` (`{base}`): the module stage is named <name>-pkg"
        ));
    }
}

fn check_url(url: &str, invalid: &mut Vec<String>) {
    let rest = ["https://", "http://", "file://"]
        .iter()
        .find_map(|s| url.strip_prefix(s));
    let Some(rest) = rest else {
        invalid.push(format!(
            "--source {url}: the URL must start with https://, http:// or file://"
        ));
        return;
    };
    if let Some(c) = url
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"'`\\{}<>|^".contains(*c))
    {
        invalid.push(format!(
            "--source {url}: `{}` is not allowed in a URL (percent-encode it)",
            c.escape_default()
        ));
        return;
    }
    let file_name = rest.rsplit('/').next().unwrap_or("");
    if url.starts_with("file://") && !rest.starts_with('/') {
        invalid.push(format!(
            "--source {url}: a file:// URL needs an absolute path (file:///path/to/source.tar.gz)"
        ));
    } else if !url.starts_with("file://") && rest.split('/').next().is_none_or(str::is_empty) {
        invalid.push(format!("--source {url}: the URL has no host"));
    } else if file_name.is_empty() || !rest.contains('/') {
        invalid.push(format!(
            "--source {url}: the URL must name a file (the source archive)"
        ));
    }
}

/// The digest in lower case, or a problem.
fn check_digest(flag: &str, value: &str, len: usize, invalid: &mut Vec<String>) -> String {
    let v = value.trim();
    if v.len() != len || !v.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut problem = format!(
            "{flag}: expected {len} hex characters, got {}",
            v.chars().count()
        );
        if let Some(bad) = v.chars().find(|c| !c.is_ascii_hexdigit()) {
            problem.push_str(&format!(" (including non-hex `{}`)", bad.escape_default()));
        }
        invalid.push(problem);
    }
    v.to_ascii_lowercase()
}

fn check_version(v: &str, invalid: &mut Vec<String>) {
    if !VERSION.is_match(v) {
        invalid.push(format!(
            "--version `{v}`: use letters, digits, `.`, `_`, `+` and `-` only"
        ));
    } else if version_format(v).is_none() {
        invalid.push(format!(
            "--version `{v}`: Talos accepts extension versions as {} (like 1.2.3)",
            version_formats().join(", ")
        ));
    }
}

/// The first `N.N[.N...]` in the URL's file name, else in its path.
fn version_from_url(url: &str) -> Option<String> {
    let file = url.rsplit('/').next().unwrap_or(url);
    VERSION_IN_URL
        .find(file)
        .or_else(|| VERSION_IN_URL.find(url))
        .map(|m| m.as_str().trim_end_matches('.').to_string())
}

/// The root's Pkgfile path and text, or a problem.
fn read_pkgfile(flag: &str, dir: &Path, invalid: &mut Vec<String>) -> Option<(PathBuf, String)> {
    let file = dir.join("Pkgfile");
    match std::fs::read_to_string(&file) {
        Ok(text) => Some((file, text)),
        Err(e) => {
            invalid.push(format!(
                "{flag} {}: cannot read {} ({e}): point {flag} at the definition root that holds the Pkgfile",
                dir.display(),
                display_path(&file).display()
            ));
            None
        }
    }
}

/// Stage names already defined in either root, for any platform.
fn stage_conflicts(req: &KmodRequest, names: &[&str], conflicts: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    for platform in Platform::ALL {
        let (defs, _) = load(&LoadOptions {
            roots: vec![req.pkgs_root.clone(), req.extensions_root.clone()],
            platform,
            build_args: Vec::new(),
            kernel_release: None,
        });
        for name in names {
            if let Some(p) = defs.find(name)
                && seen.insert(name.to_string())
            {
                conflicts.push(format!(
                    "stage `{name}` ({})",
                    display_path(&p.file).display()
                ));
            }
        }
    }
}

/// The URL with the version replaced by the Pkgfile variable, so a version
/// bump is one line of the Pkgfile.
fn url_template(url: &str, version: &str, ident: &str) -> String {
    if version.is_empty() {
        return url.to_string();
    }
    url.replace(version, &format!("{{{{ .{ident}_version }}}}"))
}

/// `NAME` plus the archive suffix of the URL's file name (`.tar` if none
/// is known: GNU tar finds the compression itself).
fn destination(name: &str, url: &str) -> String {
    let file = url.rsplit('/').next().unwrap_or("").to_ascii_lowercase();
    let suffix = ARCHIVES
        .iter()
        .find(|s| file.ends_with(*s))
        .copied()
        .unwrap_or(".tar");
    format!("{name}{suffix}")
}

/// `OWNER/REPO` of a github.com URL.
fn github_repo(url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix("https://github.com/")
        .or_else(|| url.strip_prefix("http://github.com/"))?;
    let mut parts = rest.split('/');
    let owner = parts.next().filter(|s| !s.is_empty())?;
    let repo = parts.next().filter(|s| !s.is_empty())?;
    Some((owner.to_string(), repo.trim_end_matches(".git").to_string()))
}

/// The renovate comment of the Pkgfile vars, as siderolabs/pkgs writes
/// them (`# renovate: datasource=... depName=...`).
fn renovate(url: &str, version: &str) -> String {
    let Some((owner, repo)) = github_repo(url) else {
        let host = url.split('/').nth(2).unwrap_or("");
        return if url.starts_with("file://") {
            "# a local source: no renovate datasource".to_string()
        } else {
            format!(
                "# renovate: no datasource known for {host}; see https://docs.renovatebot.com/modules/datasource/"
            )
        };
    };
    // The tag: the directory of a release download, else the archive's name.
    let (datasource, tag) = match url.split_once("/releases/download/") {
        Some((_, rest)) => ("github-releases", rest.split('/').next().unwrap_or("")),
        None => {
            let file = url.rsplit('/').next().unwrap_or("");
            let stem = ARCHIVES
                .iter()
                .find_map(|s| file.strip_suffix(s))
                .unwrap_or(file);
            ("github-tags", stem)
        }
    };
    // A tag such as `v1.2.3` or `ttkmd-2.10.0`: renovate strips the prefix.
    let extract = match tag.find(version) {
        Some(at) if !version.is_empty() && at > 0 && tag.ends_with(version) => format!(
            " extractVersion=^{}(?<version>.*)$",
            escape_regex(&tag[..at])
        ),
        _ => String::new(),
    };
    format!("# renovate: datasource={datasource}{extract} depName={owner}/{repo}")
}

/// Backslashes before the characters a regular expression gives meaning
/// to (renovate's patterns; `-` outside a class needs none).
fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn default_author(url: &str) -> String {
    match github_repo(url) {
        Some((owner, _)) => owner,
        None if url.starts_with("file://") => "unknown".to_string(),
        None => url.split('/').nth(2).unwrap_or("unknown").to_string(),
    }
}

fn indent(text: &str, pad: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(&format!("\n{pad}"))
        .replace(&format!("\n{pad}\n"), "\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_file_name() {
        let u = "https://github.com/hailo-ai/hailort-drivers/archive/refs/tags/v4.24.0.tar.gz";
        assert_eq!(version_from_url(u).as_deref(), Some("4.24.0"));
        assert_eq!(
            version_from_url("https://x.org/d/1.2/foo-1.2.3.tar.xz").as_deref(),
            Some("1.2.3")
        );
        assert_eq!(version_from_url("https://x.org/foo.tar.gz"), None);
    }

    #[test]
    fn github_sources_get_a_renovate_comment_and_a_templated_url() {
        let u = "https://github.com/hailo-ai/hailort-drivers/archive/refs/tags/v4.24.0.tar.gz";
        assert_eq!(
            renovate(u, "4.24.0"),
            "# renovate: datasource=github-tags extractVersion=^v(?<version>.*)$ depName=hailo-ai/hailort-drivers"
        );
        assert_eq!(
            url_template(u, "4.24.0", "hailort"),
            "https://github.com/hailo-ai/hailort-drivers/archive/refs/tags/v{{ .hailort_version }}.tar.gz"
        );
        assert_eq!(destination("hailort", u), "hailort.tar.gz");
        let tt = "https://github.com/tenstorrent/tt-kmd/archive/refs/tags/ttkmd-2.10.0.tar.gz";
        assert_eq!(
            renovate(tt, "2.10.0"),
            "# renovate: datasource=github-tags extractVersion=^ttkmd-(?<version>.*)$ depName=tenstorrent/tt-kmd"
        );
        let rel = "https://github.com/o/r/releases/download/1.0.0/r-1.0.0.tar.xz";
        assert_eq!(
            renovate(rel, "1.0.0"),
            "# renovate: datasource=github-releases depName=o/r"
        );
        assert_eq!(default_author(u), "hailo-ai");
    }

    #[test]
    fn names_urls_and_digests_are_checked() {
        let mut p = Vec::new();
        for bad in ["Foo", "a/b", "-a", "a--b", "a_b", "foo-pkg", ""] {
            check_name(bad, &mut p);
        }
        assert_eq!(p.len(), 7, "{p:?}");
        p.clear();
        check_name("my-driver2", &mut p);
        for ok in ["https://h/x.tar.gz", "file:///x/y.tgz", "http://h/a/b"] {
            check_url(ok, &mut p);
        }
        assert!(p.is_empty(), "{p:?}");
        for bad in [
            "ftp://h/x",
            "https:///x",
            "file://rel/x",
            "https://h/a b",
            "https://h",
        ] {
            check_url(bad, &mut p);
        }
        assert_eq!(p.len(), 5, "{p:?}");
        p.clear();
        assert_eq!(
            check_digest("--sha256", &"AB".repeat(32), 64, &mut p),
            "ab".repeat(32)
        );
        check_digest("--sha256", &"a".repeat(63), 64, &mut p);
        check_digest("--sha512", &"g".repeat(128), 128, &mut p);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[1].contains("non-hex `g`"), "{p:?}");
    }

    #[test]
    fn multi_line_descriptions_stay_in_the_block() {
        assert_eq!(indent("a\n\nb  \nc", "    "), "a\n\n    b\n    c");
    }
}
