//! The first phase of a build: every stage of a plan with its cache key
//! (`Fingerprint`: the stage's own parts, then its inputs' keys), its
//! inputs (stages of the plan, or images) and its cache entry, and whether
//! it joins the signing session. Nothing runs here; `build` decides and
//! `schedule` runs.
//!
//! Invariant: a key covers what makes an output (the rendered definition,
//! scripts, env, source digests, `/pkg`, the dependencies' keys, the base
//! and the platform), never mtimes or where the checkout lives.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::build::{BuildError, Options};
use super::cache::{Cache, Entry};
use super::image;
use super::key::Fingerprint;
use super::pkgdir::PkgDir;
use super::shell;
use crate::defs::load::{Definitions, Package};
use crate::graph::{Graph, Input, Plan};

/// Where an input comes from.
pub(crate) enum Origin {
    /// The output of the plan's stage at this index.
    Stage(usize),
    /// An image, and its unpacked filesystem once the stage is to run.
    Image(image::Resolved, Option<PathBuf>),
}

/// A stage of the plan: its key, its inputs and what was decided for it.
pub(crate) struct Planned<'d> {
    pub(super) package: &'d Package,
    pub(super) key: String,
    pub(super) fingerprint: Fingerprint,
    pub(super) pkgdir: PkgDir,
    /// The plan's stages it is built on (indexes).
    pub(super) deps: Vec<usize>,
    pub(super) inputs: Vec<(Input, Origin)>,
    pub(super) in_session: bool,
    pub(super) hit: Option<Entry>,
    /// Whether it runs (a cache miss, or a stage of a new session).
    pub(super) run: bool,
    /// With `run`: its cached build is signed again for a new session
    /// instead of running its steps (`build::decide`).
    pub(super) resign: bool,
}

/// Every stage of the plan, dependencies first, with its key, its inputs
/// and its cache entry; and where each stage name is in it.
pub(super) fn plan_stages<'d, 'p>(
    defs: &'d Definitions,
    plan: &'p Plan,
    opts: &Options,
    cache: &Cache,
) -> Result<(Vec<Planned<'d>>, HashMap<&'p str, usize>), BuildError> {
    let mut report = crate::diag::Report::default();
    let graph = Graph::new(defs, &mut report);
    let platform = defs.platform.to_string();
    let store = cache.root().join("images");
    let fetch = image::Fetch {
        store: &store,
        offline: opts.offline,
        insecure: opts.insecure,
    };
    let mut planned: Vec<Planned<'d>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for name in &plan.order {
        let failed = |message: String| BuildError::Input {
            stage: name.clone(),
            message,
        };
        let package = graph
            .get(name)
            .ok_or_else(|| failed("not in the definitions".into()))?;
        let root = &defs.roots[package.root];
        let project = root.dir.parent().unwrap_or(&root.dir);
        let pkgdir = PkgDir::collect(&package.pkg.dir, project, &package.templates)?;
        let mut fp = own_fingerprint(package, &pkgdir, opts, &platform)?;
        let mut deps = Vec::new();
        let mut inputs = Vec::new();
        let mut in_session = package.joins_signing_session();
        for input in graph.inputs(package) {
            let Some(dep) = input.what.strip_prefix("stage:") else {
                let reference = input.what.trim_start_matches("image:");
                let resolved = image::resolve(reference, &root.dir, &platform, &fetch)
                    .map_err(|e| failed(e.to_string()))?;
                fp.add(
                    format!("dependency {reference} ({} → {})", input.from, input.to),
                    &resolved.digest,
                );
                inputs.push((input, Origin::Image(resolved, None)));
                continue;
            };
            let &i = index
                .get(dep)
                .ok_or_else(|| failed(format!("dependency {dep} is not part of the plan")))?;
            fp.add(
                format!("dependency {dep} ({} → {})", input.from, input.to),
                &planned[i].key,
            );
            in_session |= planned[i].in_session;
            if !deps.contains(&i) {
                deps.push(i);
            }
            inputs.push((input, Origin::Stage(i)));
        }
        let key = fp.key();
        let hit = cache.lookup(&key);
        index.insert(name.as_str(), planned.len());
        planned.push(Planned {
            package,
            key,
            fingerprint: fp,
            pkgdir,
            deps,
            inputs,
            in_session,
            run: hit.is_none(),
            resign: false,
            hit,
        });
    }
    join_kernel_tree_users(&mut planned, &index);
    Ok((planned, index))
}

/// A stage built on a session's kernel tree joins the session: the tree is
/// a dependency a session stage of the plan certifies
/// (`SESSION_KERNEL_TREE`: a kernel compiled with no key, whose certificate
/// that stage writes in). Modules built against it are for the kernel the
/// session certifies, so they are signed with the session's key; the tree
/// itself is reused across sessions. Stages built on a stage that joined
/// join too (plan order is dependency order).
fn join_kernel_tree_users(planned: &mut [Planned<'_>], index: &HashMap<&str, usize>) {
    let trees: std::collections::BTreeSet<usize> = planned
        .iter()
        .flat_map(|p| p.package.certified_trees())
        .filter_map(|t| index.get(t).copied())
        .filter(|&t| !planned[t].in_session)
        .collect();
    for i in 0..planned.len() {
        let joins = planned[i]
            .deps
            .iter()
            .any(|&d| trees.contains(&d) || planned[d].in_session);
        planned[i].in_session |= joins;
    }
}

/// The parts of a stage's key that are its own, before its inputs'.
fn own_fingerprint(
    package: &Package,
    pkgdir: &PkgDir,
    opts: &Options,
    platform: &str,
) -> Result<Fingerprint, BuildError> {
    let mut fp = Fingerprint::default();
    fp.add("platform", platform);
    fp.add("definition", &package.rendered);
    fp.add(
        "variant",
        format!("{:?}", package.pkg.variant).to_lowercase(),
    );
    fp.add("shell", shell::shell_of(&package.pkg, Path::new("/")));
    fp.add(
        "sandbox",
        "bwrap; caps: runtime default; /tmp/build; /pkg ro",
    );
    if let Some(e) = opts.epoch {
        fp.add("SOURCE_DATE_EPOCH", e.to_string());
    }
    if package.pkg.variant == crate::defs::schema::Variant::Host {
        fp.add("base", host_fingerprint());
    }
    describe_steps(&mut fp, package);
    super::sbom::fingerprint(&mut fp, package, opts.epoch).map_err(|e| BuildError::Input {
        stage: package.pkg.name.value.clone(),
        message: e.to_string(),
    })?;
    for (n, v) in pkgdir.parts()? {
        fp.add(n, v);
    }
    Ok(fp)
}

/// Adds the steps' scripts, env, sources, network and cachePaths, and the
/// finalize list, part by part so a miss names what changed.
fn describe_steps(fp: &mut Fingerprint, package: &Package) {
    for (i, step) in package.pkg.steps.iter().enumerate() {
        let n = i + 1;
        for (k, v) in &step.env {
            fp.add(format!("step {n} env {k}"), v);
        }
        for src in &step.sources {
            fp.add(
                format!("step {n} source {}", src.destination),
                format!("{} {}", src.sha256, src.sha512),
            );
        }
        if let Some(net) = step.network {
            fp.add(
                format!("step {n} network"),
                format!("{net:?}").to_lowercase(),
            );
        }
        if !step.cache_paths.is_empty() {
            fp.add(format!("step {n} cachePaths"), step.cache_paths.join(" "));
        }
        for (phase, items) in [
            ("prepare", &step.prepare),
            ("build", &step.build),
            ("install", &step.install),
            ("test", &step.test),
        ] {
            for (j, item) in items.iter().enumerate() {
                fp.add(format!("step {n} {phase}[{j}] script"), item);
            }
        }
    }
    let fin: Vec<String> = package
        .pkg
        .finalize
        .iter()
        .map(|f| format!("{} → {}", f.from, f.to))
        .collect();
    fp.add("finalize", fin.join(", "));
}

/// What identifies the host as a `variant: host` base: the distribution
/// and the installed packages (Debian's dpkg status, or rpm's database).
fn host_fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in [
        "/etc/os-release",
        "/var/lib/dpkg/status",
        "/var/lib/rpm/rpmdb.sqlite",
        "/lib/apk/db/installed",
    ] {
        if let Ok(bytes) = fs::read(f) {
            h.update(f.as_bytes());
            h.update(&bytes);
        }
    }
    format!("host packages {}", &hex::encode(h.finalize())[..16])
}

/// The signing session every one of `session`'s stages has a cache entry
/// of, when they all come from one same session (it can be reused).
pub(super) fn reused_session<'a>(planned: &'a [Planned<'_>], session: &[usize]) -> Option<&'a str> {
    let mut ids = session.iter().map(|&i| {
        planned[i]
            .hit
            .as_ref()
            .and_then(|h| h.meta.session.as_deref())
    });
    let first = ids.next()??;
    ids.all(|id| id == Some(first)).then_some(first)
}
