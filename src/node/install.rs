//! `composer kmod install` and `remove`: images read, verified, and put
//! where modprobe finds them, as one transaction each.
//!
//! Where modules go (`<base>/lib/modules/<release>/updates/composer/<name>/`,
//! so depmod's default search order puts them before the kernel's own):
//! - `<base>` is `/` when `/lib/modules/<release>` is writable: plain
//!   `modprobe NAME` finds them;
//! - else (a read-only `/usr`: Flatcar, Talos; no such directory), or with
//!   `--own-modules-dir`, `<state-dir>/modules`, used as KMM uses
//!   `modprobe -d`: a `host` symlink there to `/lib/modules/<release>` lets
//!   depmod index the kernel's own modules too, so dependencies on them
//!   resolve.
//!
//! depmod (`depmod -b <base> <release>`) indexes the result. Firmware goes
//! to `/lib/firmware/updates/<release>/` when `/lib/firmware` is writable
//! (a directory the kernel searches), else to
//! `<state-dir>/firmware/<release>/`, and then, for the running kernel,
//! `firmware_class.path` is set to it; a value someone else set is not
//! replaced (the install is refused, naming it).
//!
//! Order: references, kernel facts, every image read and verified (with
//! the conflicts: a module name or firmware file another image installed,
//! a firmware file composer did not install) — a refusal here writes
//! nothing, not even the cache —, then the verified images enter the
//! cache, and under the state lock one transaction (`apply`) stages,
//! renames, runs depmod, places firmware, sets the parameter and writes
//! `installed.json`. An image whose digest is installed and whose files
//! are all present is left alone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::host::Enforcement;
use super::kernel::{self, Anchors, KernelFacts};
use super::source::{self, Cache, FetchOptions, Fetched, ImageModules, Reference};
use super::state::{Installed, State};
use super::verify::{Verdict, verify};
use super::{Host, NodeError, Note, apply};

/// What `install` needs.
pub struct InstallOptions<'a> {
    pub host: &'a Host,
    /// The kernel release installed for.
    pub release: String,
    /// composer's state directory on the node (`installed.json`, its own
    /// module and firmware directories).
    pub state_dir: PathBuf,
    /// The image cache on the node.
    pub cache_dir: PathBuf,
    /// Trust anchors: certificate files and kernel images (none: the
    /// release's kernel image).
    pub certs: Vec<PathBuf>,
    pub kernels: Vec<PathBuf>,
    /// The name of the one image given (else made from its reference).
    pub name: Option<String>,
    /// composer's own module directory even where `/lib/modules/<release>`
    /// is writable.
    pub own_modules_dir: bool,
    /// Relative local references are taken from here.
    pub cwd: PathBuf,
    /// `linux/amd64`.
    pub platform: String,
    pub offline: bool,
    pub insecure: bool,
}

/// Where this install puts modules and firmware (node paths).
pub(crate) struct Destination {
    pub modprobe_dir: PathBuf,
    pub own: bool,
    pub firmware_dir: PathBuf,
    /// The kernel searches `firmware_dir` without `firmware_class.path`.
    pub firmware_searched: bool,
}

impl Destination {
    fn choose(host: &Host, release: &str, state_dir: &Path, force_own: bool) -> Destination {
        let system = host.path(format!("/lib/modules/{release}"));
        let own = force_own || !Host::writable(&system);
        let searched = Host::writable(&host.path("/lib/firmware"));
        Destination {
            modprobe_dir: if own {
                state_dir.join("modules")
            } else {
                PathBuf::from("/")
            },
            own,
            firmware_dir: if searched {
                PathBuf::from(format!("/lib/firmware/updates/{release}"))
            } else {
                state_dir.join("firmware").join(release)
            },
            firmware_searched: searched,
        }
    }
}

/// The node path of an image's module directory.
pub(crate) fn image_dir(modprobe_dir: &Path, release: &str, name: &str) -> PathBuf {
    modprobe_dir
        .join("lib/modules")
        .join(release)
        .join("updates/composer")
        .join(name)
}

/// One image ready to install.
pub(crate) struct Planned {
    pub fetched: Fetched,
    pub image: ImageModules,
    pub verdict: Verdict,
    /// (file in the image, node path it goes to).
    pub firmware: Vec<(PathBuf, PathBuf)>,
}

impl Planned {
    pub fn name(&self) -> &str {
        &self.fetched.reference.name
    }
}

/// What the checks of every image share.
struct Checks<'a> {
    facts: KernelFacts,
    anchors: Result<Anchors, String>,
    enforcement: Enforcement,
    state: &'a State,
    dest: &'a Destination,
}

/// Installs the images `refs` for `o.release`; returns what is installed.
pub fn install(
    refs: &[String],
    o: &InstallOptions<'_>,
    on: &dyn Fn(Note),
) -> Result<Vec<Installed>, NodeError> {
    if o.name.is_some() && refs.len() != 1 {
        return Err(NodeError::Input(format!(
            "--name names one image, and {} references are given",
            refs.len()
        )));
    }
    let host = o.host;
    let release = o.release.as_str();
    let mut references: Vec<Reference> = Vec::new();
    for r in refs {
        let r = source::reference(r, release, &o.cwd, o.name.as_deref())?;
        if let Some(same) = references.iter().find(|x| x.name == r.name) {
            return Err(NodeError::Input(format!(
                "`{}` and `{}` would both be installed as `{}`: install them one at a time with --name",
                same.given, r.given, r.name
            )));
        }
        references.push(r);
    }
    let enforcement = host.enforcement()?;
    let anchors = kernel::anchors(host, release, &o.certs, &o.kernels)?;
    let state = State::read(host, &o.state_dir)?;
    let dest = Destination::choose(host, release, &o.state_dir, o.own_modules_dir);
    let running = host.running_release().ok().as_deref() == Some(release);
    let mut dirs = vec![host.path(format!("/lib/modules/{release}"))];
    if dest.own {
        dirs.push(host.path(dest.modprobe_dir.join("lib/modules").join(release)));
    }
    let ignore: Vec<PathBuf> = references
        .iter()
        .map(|r| PathBuf::from("updates/composer").join(&r.name))
        .collect();
    let checks = Checks {
        facts: kernel::facts(host, release, running, &dirs, &ignore),
        anchors,
        enforcement,
        state: &state,
        dest: &dest,
    };
    let cache = Cache::new(host.path(&o.cache_dir));
    let created = super::create_dirs(&host.path(&o.cache_dir))?;
    let fetch = FetchOptions {
        cwd: &o.cwd,
        platform: &o.platform,
        offline: o.offline,
        insecure: o.insecure,
    };
    let mut planned = match prepare(&references, &cache, &fetch, &checks, host, release, on) {
        Ok(p) => p,
        Err(e) => {
            super::remove_empty(&created);
            return Err(e);
        }
    };
    for u in &checks.facts.unchecked {
        on(Note::Info(format!("note: {u}")));
    }
    for p in &mut planned {
        let before = p.fetched.tree.clone();
        cache.commit(release, &mut p.fetched)?;
        p.image.rebase(&before, &p.fetched.tree);
        for f in &mut p.firmware {
            f.0 = source::rebased(&f.0, &before, &p.fetched.tree);
        }
    }
    apply::install(host, o, &dest, planned, running, on)
}

/// Reads and verifies every image; nothing is written to the node.
fn prepare(
    references: &[Reference],
    cache: &Cache,
    fetch: &FetchOptions<'_>,
    c: &Checks<'_>,
    host: &Host,
    release: &str,
    on: &dyn Fn(Note),
) -> Result<Vec<Planned>, NodeError> {
    let mut planned: Vec<Planned> = Vec::new();
    let mut refused = Vec::new();
    for r in references {
        let fetched = cache.fetch(r, release, fetch)?;
        match &fetched.cached_because {
            Some(why) => on(Note::Warning(format!(
                "{}: {why}; using the cached copy {} (from {})",
                r.name, fetched.digest, r.resolved
            ))),
            None => on(Note::Info(format!(
                "{}: {} is {}",
                r.name, r.resolved, fetched.digest
            ))),
        }
        let image = match source::locate(&fetched.tree, release) {
            Ok(i) => i,
            Err(e) => {
                refused.push(format!("{} ({}): the image {e}", r.name, r.given));
                continue;
            }
        };
        let mut verdict = verify(&image, &c.facts, &c.anchors, c.enforcement);
        for w in &verdict.warnings {
            on(Note::Warning(format!("{}: {w}", r.name)));
        }
        let mut problems = std::mem::take(&mut verdict.problems);
        conflicts(c, &planned, r, &verdict, &mut problems);
        let firmware = firmware_plan(host, c, &planned, r, &image, &mut problems);
        if problems.is_empty() {
            on(Note::Info(summary(r, &image, &verdict, c)));
            planned.push(Planned {
                fetched,
                image,
                verdict,
                firmware,
            });
        } else {
            refused.push(format!(
                "{} ({}):\n  {}",
                r.name,
                r.given,
                problems.join("\n  ")
            ));
        }
    }
    if refused.is_empty()
        && let Err(e) = firmware_path_check(host, c, &planned, release, on)
    {
        refused.push(e);
    }
    if !refused.is_empty() {
        return Err(NodeError::Refused(refused));
    }
    Ok(planned)
}

/// One line on what passed.
fn summary(r: &Reference, image: &ImageModules, v: &Verdict, c: &Checks<'_>) -> String {
    let signers: BTreeSet<&str> = v
        .modules
        .iter()
        .filter_map(|m| m.signer.as_deref())
        .collect();
    let signed = match (&c.anchors, signers.is_empty()) {
        (Ok(a), false) => format!(
            "signed by {} (trusted: {})",
            signers.into_iter().collect::<Vec<_>>().join(", "),
            a.from
        ),
        (Ok(_), true) => "not signed by a trusted key".to_string(),
        (Err(_), _) => "signatures not checked".to_string(),
    };
    let vermagic = match &c.facts.vermagic {
        Some((_, from)) => format!("vermagic as {from}"),
        None => format!("vermagic for {}", c.facts.release),
    };
    format!(
        "{}: {} module(s) of a {} verified: {signed}; {vermagic}",
        r.name,
        v.modules.len(),
        image.layout
    )
}

/// Module names another installed image (or an earlier one of this
/// install) already has for the release.
fn conflicts(
    c: &Checks<'_>,
    planned: &[Planned],
    r: &Reference,
    v: &Verdict,
    problems: &mut Vec<String>,
) {
    let release = &c.facts.release;
    for m in &v.modules {
        let other = c
            .state
            .images
            .iter()
            .filter(|i| i.release == *release && i.name != r.name)
            .find(|i| i.modules.iter().any(|x| x.name == m.name))
            .map(|i| i.name.as_str())
            .or_else(|| {
                planned
                    .iter()
                    .find(|p| p.verdict.modules.iter().any(|x| x.name == m.name))
                    .map(Planned::name)
            });
        if let Some(other) = other {
            problems.push(format!(
                "{}: module `{}` is installed by image `{other}` too: modprobe would take only one (remove `{other}` first)",
                m.file.display(),
                m.name
            ));
        }
    }
}

/// Where each firmware file goes; a file another image installed, or one
/// composer did not install and that differs, is a problem.
fn firmware_plan(
    host: &Host,
    c: &Checks<'_>,
    planned: &[Planned],
    r: &Reference,
    image: &ImageModules,
    problems: &mut Vec<String>,
) -> Vec<(PathBuf, PathBuf)> {
    let release = &c.facts.release;
    let old = c.state.find(release, &r.name);
    let mut out = Vec::new();
    for (rel, src) in &image.firmware {
        let dest = c.dest.firmware_dir.join(rel);
        let owner = c
            .state
            .images
            .iter()
            .filter(|i| i.release == *release && i.name != r.name)
            .find(|i| i.firmware.contains(&dest))
            .map(|i| i.name.as_str())
            .or_else(|| {
                planned
                    .iter()
                    .find(|p| p.firmware.iter().any(|f| f.1 == dest))
                    .map(Planned::name)
            });
        if let Some(owner) = owner {
            problems.push(format!(
                "firmware {}: image `{owner}` installed it",
                dest.display()
            ));
            continue;
        }
        let on_node = host.path(&dest);
        let ours = old.is_some_and(|o| o.firmware.contains(&dest));
        if !ours && on_node.symlink_metadata().is_ok() {
            if same_file(src, &on_node) {
                continue;
            }
            problems.push(format!(
                "firmware {} is there already and composer did not install it: not overwritten",
                dest.display()
            ));
            continue;
        }
        out.push((src.clone(), dest));
    }
    out
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::read_link(a), std::fs::read_link(b)) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => std::fs::read(a)
            .ok()
            .is_some_and(|x| std::fs::read(b).ok() == Some(x)),
        _ => false,
    }
}

/// `firmware_class.path` must be free (or ours) when firmware goes where
/// the running kernel does not search.
fn firmware_path_check(
    host: &Host,
    c: &Checks<'_>,
    planned: &[Planned],
    release: &str,
    on: &dyn Fn(Note),
) -> Result<(), String> {
    let with: Vec<&str> = planned
        .iter()
        .filter(|p| !p.firmware.is_empty())
        .map(Planned::name)
        .collect();
    if with.is_empty() || c.dest.firmware_searched {
        return Ok(());
    }
    let ours = c.dest.firmware_dir.display().to_string();
    if host.running_release().ok().as_deref() != Some(release) {
        on(Note::Info(format!(
            "firmware goes to {ours}; set firmware_class.path={ours} when kernel {release} runs"
        )));
        return Ok(());
    }
    match host.firmware_path() {
        None => {
            on(Note::Warning(format!(
                "the kernel has no firmware_class.path parameter: the firmware of {} in {ours} will not be found",
                with.join(", ")
            )));
            Ok(())
        }
        Some(v) if v.is_empty() || v == ours => Ok(()),
        Some(v) => Err(format!(
            "firmware of {}: /lib/firmware is read-only, so it goes to {ours}, which the kernel searches only through firmware_class.path; that is {v} already (the kernel takes one such path): not replaced",
            with.join(", ")
        )),
    }
}
