//! Loads definition roots: finds `Pkgfile`, `pkg.yaml`, `vars.yaml` and
//! `*.tmpl` files, resolves each package's variables, renders and reads its
//! `pkg.yaml`, and renders its templates.
//!
//! Invariants:
//! - Every root keeps its own scope: its Pkgfile vars and `vars.yaml` files
//!   reach only the packages below it.
//! - Discovery is bldr's: hidden directories are skipped (and `_out/`,
//!   composer's output), symlinks are not followed, results are sorted so a
//!   load is deterministic.
//! - A file that cannot be read, is over `MAX_FILE_BYTES`, or is not UTF-8
//!   becomes one diagnostic; loading always goes on to the next file.
//! - A `*.tmpl` belongs to the closest package at or above its directory and
//!   renders with that package's variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walkdir::WalkDir;

use super::pkg::read_pkg;
use super::pkgfile::read_pkgfile;
use super::schema::{Pkg, Pkgfile};
use super::template::{Rendered, render};
use super::vars::{Platform, Vars};
use super::yaml::{self, LineMap, Reader};
use crate::diag::{Diagnostic, Report, Span};

/// Definition files larger than this are refused: real ones are a few KiB.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// What to load and for which platform.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub roots: Vec<PathBuf>,
    pub platform: Platform,
    /// `--build-arg NAME=VALUE` pairs.
    pub build_args: Vec<(String, String)>,
    /// The kernel release the build is for (`--kernel-release`), seen by
    /// templates as `KERNEL_FULL_VERSION`; checked by the caller
    /// (`vars::check_kernel_release`).
    pub kernel_release: Option<String>,
}

/// One root directory and its Pkgfile scope.
#[derive(Clone, Debug)]
pub struct Root {
    pub dir: PathBuf,
    pub pkgfile: Pkgfile,
    /// Built-ins, build args and Pkgfile vars: the context of the root.
    pub context: Vars,
}

/// One loaded package (stage).
#[derive(Clone, Debug)]
pub struct Package {
    pub pkg: Pkg,
    /// Index into `Definitions::roots`.
    pub root: usize,
    /// The `pkg.yaml` file.
    pub file: Arc<Path>,
    /// The variables of the package's directory.
    pub vars: Vars,
    /// `pkg.yaml` after template expansion, as bldr parses it.
    pub rendered: String,
    /// Rendered `*.tmpl` files: path relative to the package dir, without
    /// `.tmpl`, and the text.
    pub templates: Vec<(PathBuf, String)>,
}

/// Everything loaded from all roots.
#[derive(Clone, Debug)]
pub struct Definitions {
    pub platform: Platform,
    pub roots: Vec<Root>,
    pub packages: Vec<Package>,
}

/// The directory a build's signing session is mounted at. A stage whose
/// rendered definition mentions it builds with the session's certificate
/// and so joins the session, and so does every stage that depends on it
/// (`exec::build` runs the session; `graph::matrix` groups targets by it).
pub const SIGNING_DIR: &str = "/signing/";

/// The env variable by which a session stage names the kernel tree it
/// writes the session's certificate into (a dependency compiled with no
/// key): every stage built on that tree joins the session, and building one
/// brings this stage into the plan.
pub const SESSION_KERNEL_TREE: &str = "SESSION_KERNEL_TREE";

impl Package {
    /// Whether the stage joins the signing session by itself (its rendered
    /// definition mentions `SIGNING_DIR`), not through a dependency.
    pub fn joins_signing_session(&self) -> bool {
        self.rendered.contains(SIGNING_DIR)
    }

    /// The kernel trees this session stage certifies: the values of its
    /// steps' `SESSION_KERNEL_TREE` that name one of its stage
    /// dependencies.
    pub fn certified_trees(&self) -> Vec<&str> {
        if !self.joins_signing_session() {
            return Vec::new();
        }
        let deps: Vec<&str> = self.pkg.stage_deps().map(|(d, _)| d).collect();
        self.pkg
            .steps
            .iter()
            .flat_map(|s| s.env.iter())
            .filter(|(k, _)| k == SESSION_KERNEL_TREE)
            .map(|(_, v)| v.as_str())
            .filter(|v| deps.contains(v))
            .collect()
    }
}

impl Definitions {
    pub fn find(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.pkg.name.value == name)
    }
}

/// A file read as UTF-8 text, or one diagnostic saying why not.
pub fn read_text(path: &Path, report: &mut Report) -> Option<String> {
    let file: Arc<Path> = Arc::from(path);
    let fail = |report: &mut Report, line, col, msg: String| {
        report.push(Diagnostic::error(Span::new(&file, line, col), "", msg));
    };
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            fail(
                report,
                1,
                1,
                format!(
                    "file is {:.1} MiB, over the {} MiB limit for definition files",
                    m.len() as f64 / (1 << 20) as f64,
                    MAX_FILE_BYTES >> 20
                ),
            );
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            fail(report, 1, 1, format!("cannot read: {e}"));
            return None;
        }
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            fail(report, 1, 1, format!("cannot read: {e}"));
            return None;
        }
    };
    match String::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let head = String::from_utf8_lossy(&e.as_bytes()[..valid]);
            let (line, col) = super::template::line_col(&head, head.len());
            fail(
                report,
                line,
                col,
                format!(
                    "not UTF-8 text (invalid byte 0x{:02x})",
                    e.as_bytes()[valid]
                ),
            );
            None
        }
    }
}

/// The files of one root, found by walking it.
#[derive(Default)]
struct Found {
    pkgs: Vec<PathBuf>,
    vars: Vec<PathBuf>,
    templates: Vec<PathBuf>,
}

fn discover(root: &Path, report: &mut Report) -> Found {
    let mut found = Found::default();
    let walker = WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0
                || !(e.file_type().is_dir() && {
                    let name = e.file_name().to_string_lossy();
                    name.starts_with('.') || (e.depth() == 1 && name == "_out")
                })
        });
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                report.push(Diagnostic::error(
                    Span::file_start(&Arc::from(path.as_path())),
                    "",
                    format!("cannot read directory entry: {e}"),
                ));
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.into_path();
        if name == "pkg.yaml" {
            found.pkgs.push(path);
        } else if name == "vars.yaml" {
            found.vars.push(path);
        } else if name.ends_with(".tmpl") {
            found.templates.push(path);
        }
    }
    found
}

/// Loads every root. Problems are collected in the report; the definitions
/// hold every package that could be read.
pub fn load(opts: &LoadOptions) -> (Definitions, Report) {
    let mut report = Report::new();
    let mut defs = Definitions {
        platform: opts.platform,
        roots: Vec::new(),
        packages: Vec::new(),
    };
    let mut base = opts.platform.builtins();
    if let Some(release) = &opts.kernel_release {
        base.set(
            "KERNEL_FULL_VERSION",
            gotmpl::Value::String(release.as_str().into()),
        );
    }
    base.merge(&Vars::from_build_args(&opts.build_args));
    for dir in &opts.roots {
        let index = defs.roots.len();
        let (root, packages) = load_root(dir, index, &base, &mut report);
        defs.roots.push(root);
        defs.packages.extend(packages);
    }
    (defs, report)
}

fn load_root(dir: &Path, index: usize, base: &Vars, report: &mut Report) -> (Root, Vec<Package>) {
    let mut root = Root {
        dir: dir.to_path_buf(),
        pkgfile: Pkgfile::default(),
        context: base.clone(),
    };
    if !dir.is_dir() {
        report.push(Diagnostic::error(
            Span::file_start(&Arc::from(dir)),
            "",
            "definition root is not a directory",
        ));
        return (root, Vec::new());
    }
    let pkgfile_path = dir.join("Pkgfile");
    if pkgfile_path.is_file()
        && let Some(text) = read_text(&pkgfile_path, report)
    {
        let file: Arc<Path> = Arc::from(pkgfile_path.as_path());
        let lines = LineMap::identity();
        if let Some(doc) = yaml::parse(&file, &text, &lines, report) {
            let mut r = Reader {
                file: file.clone(),
                lines: &lines,
                report,
            };
            let (pkgfile, vars) = read_pkgfile(&mut r, doc.as_ref());
            root.pkgfile = pkgfile;
            root.context.merge(&vars);
        }
    }

    let found = discover(dir, report);
    let contexts = VarsCascade::new(&root.context, &found.vars, report);

    let mut packages = Vec::new();
    for path in &found.pkgs {
        let pkg_dir = path.parent().unwrap_or(dir);
        let vars = contexts.at(pkg_dir);
        if let Some(p) = load_package(path, pkg_dir, index, vars, report) {
            packages.push(p);
        }
    }
    attach_templates(&mut packages, &found.templates, report);
    (root, packages)
}

fn load_package(
    path: &Path,
    dir: &Path,
    root: usize,
    vars: Vars,
    report: &mut Report,
) -> Option<Package> {
    let file: Arc<Path> = Arc::from(path);
    let text = read_text(path, report)?;
    let Rendered {
        text: rendered,
        lines,
    } = render(&file, &text, &vars, report)?;
    let pkg = read_pkg_text(&file, &rendered, &lines, dir, report)?;
    Some(Package {
        pkg,
        root,
        file,
        vars,
        rendered,
        templates: Vec::new(),
    })
}

fn read_pkg_text(
    file: &Arc<Path>,
    rendered: &str,
    lines: &LineMap,
    dir: &Path,
    report: &mut Report,
) -> Option<Pkg> {
    let Some(doc) = yaml::parse(file, rendered, lines, report)? else {
        report.push(Diagnostic::error(
            Span::file_start(file),
            "",
            "empty pkg.yaml: expected a mapping with at least `name` and `variant`",
        ));
        return None;
    };
    let mut r = Reader {
        file: file.clone(),
        lines,
        report,
    };
    read_pkg(&mut r, &doc, dir)
}

/// Gives each template to the closest package at or above it and renders it
/// with that package's variables.
fn attach_templates(packages: &mut [Package], templates: &[PathBuf], report: &mut Report) {
    for path in templates {
        let owner = packages
            .iter_mut()
            .filter(|p| path.starts_with(&p.pkg.dir))
            .max_by_key(|p| p.pkg.dir.components().count());
        let file: Arc<Path> = Arc::from(path.as_path());
        let Some(owner) = owner else {
            report.push(Diagnostic::error(
                Span::file_start(&file),
                "",
                "no package owns this template: no pkg.yaml in its directory or above",
            ));
            continue;
        };
        let Some(text) = read_text(path, report) else {
            continue;
        };
        if let Some(r) = render(&file, &text, &owner.vars, report) {
            let rel = path.strip_prefix(&owner.pkg.dir).unwrap_or(path);
            let name = rel.with_extension("");
            owner.templates.push((name, r.text));
        }
    }
}

/// The `vars.yaml` files of a root, each rendered with the variables above
/// it, and the context of any directory below the root.
struct VarsCascade {
    base: Vars,
    /// Directory → that directory's own `vars.yaml` variables.
    own: BTreeMap<PathBuf, Vars>,
}

impl VarsCascade {
    fn new(base: &Vars, files: &[PathBuf], report: &mut Report) -> Self {
        let mut cascade = VarsCascade {
            base: base.clone(),
            own: BTreeMap::new(),
        };
        let mut files: Vec<&PathBuf> = files.iter().collect();
        files.sort_by_key(|p| p.components().count());
        for path in files {
            let Some(dir) = path.parent() else { continue };
            let context = cascade.at(dir);
            let file: Arc<Path> = Arc::from(path.as_path());
            let Some(text) = read_text(path, report) else {
                continue;
            };
            let Some(r) = render(&file, &text, &context, report) else {
                continue;
            };
            let Some(doc) = yaml::parse(&file, &r.text, &r.lines, report) else {
                continue;
            };
            let mut reader = Reader {
                file: file.clone(),
                lines: &r.lines,
                report,
            };
            let vars = match doc {
                Some(node) => Vars::from_node(&mut reader, &node, ""),
                None => Vars::default(),
            };
            cascade.own.insert(dir.to_path_buf(), vars);
        }
        cascade
    }

    /// The variables in force in `dir`: the base, then every `vars.yaml`
    /// from the root down to `dir` itself.
    fn at(&self, dir: &Path) -> Vars {
        let mut vars = self.base.clone();
        for (d, own) in &self.own {
            if dir.starts_with(d) {
                // BTreeMap order puts a parent before its children.
                vars.merge(own);
            }
        }
        vars
    }
}
