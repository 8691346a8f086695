//! Installs and removals applied to the node, each as one transaction
//! (`txn`) under the state lock: module directories staged and renamed
//! into place (the ones they replace renamed aside), depmod over every
//! module directory touched, firmware files placed, `firmware_class.path`
//! set, and `installed.json` replaced last. Any failure undoes every step
//! taken: the node is left as it was, index files included.
//!
//! A process killed halfway can leave a `.composer-*` staging directory
//! beside a module or firmware directory (never inside one depmod reads),
//! holding what was renamed aside.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::install::{Destination, InstallOptions, Planned, image_dir};
use super::state::{Installed, InstalledModule, State, lock};
use super::txn::{Txn, depmod, undo};
use super::{Host, NodeError, Note, io};

/// Installs the verified images `planned`.
pub(crate) fn install(
    host: &Host,
    o: &InstallOptions<'_>,
    dest: &Destination,
    planned: Vec<Planned>,
    running: bool,
    on: &dyn Fn(Note),
) -> Result<Vec<Installed>, NodeError> {
    let release = o.release.as_str();
    let _lock = lock(&host.path(&o.state_dir))?;
    let state = State::read(host, &o.state_dir)?;
    let (current, todo): (Vec<Planned>, Vec<Planned>) = planned
        .into_iter()
        .partition(|p| up_to_date(host, &state, release, p));
    let mut out: Vec<Installed> = Vec::new();
    for p in &current {
        let i = state
            .find(release, p.name())
            .expect("up to date means installed");
        on(Note::Info(format!(
            "{}: {} is installed already ({})",
            i.name,
            i.digest,
            i.dir.display()
        )));
        out.push(i.clone());
    }
    let param = firmware_param(host, dest, current.iter().chain(&todo), running);
    if todo.is_empty() && param.is_none() {
        return Ok(out);
    }
    let mut txn = Txn::new();
    match install_steps(&mut txn, host, o, dest, &todo, &state, param) {
        Ok(installed) => {
            txn.commit();
            out.extend(installed);
            Ok(out)
        }
        Err(e) => Err(undo(txn, e)),
    }
}

/// Installed with the same digest and every file where it was put.
fn up_to_date(host: &Host, state: &State, release: &str, p: &Planned) -> bool {
    state.find(release, p.name()).is_some_and(|i| {
        i.digest == p.fetched.digest
            && i.modules.iter().all(|m| host.path(&m.path).is_file())
            && i.firmware
                .iter()
                .all(|f| host.path(f).symlink_metadata().is_ok())
    })
}

/// `(new, old)` values of `firmware_class.path` when it must be set.
fn firmware_param<'a>(
    host: &Host,
    dest: &Destination,
    mut planned: impl Iterator<Item = &'a Planned>,
    running: bool,
) -> Option<(String, String)> {
    if dest.firmware_searched || !running || !planned.any(|p| !p.firmware.is_empty()) {
        return None;
    }
    let ours = dest.firmware_dir.display().to_string();
    match host.firmware_path() {
        Some(v) if v.is_empty() => Some((ours, v)),
        _ => None,
    }
}

fn install_steps(
    txn: &mut Txn,
    host: &Host,
    o: &InstallOptions<'_>,
    dest: &Destination,
    todo: &[Planned],
    state: &State,
    param: Option<(String, String)>,
) -> Result<Vec<Installed>, NodeError> {
    let release = o.release.as_str();
    let replaced: Vec<&Installed> = todo
        .iter()
        .filter_map(|p| state.find(release, p.name()))
        .collect();
    let mut bases: BTreeSet<PathBuf> = BTreeSet::from([dest.modprobe_dir.clone()]);
    bases.extend(replaced.iter().map(|i| i.modprobe_dir.clone()));
    let staging = guard_bases(txn, host, &bases, release, true)?;
    if dest.own {
        host_link(txn, host, dest, release)?;
    }
    let mut installed = Vec::new();
    for p in todo {
        let name = p.name();
        let new = staging[&dest.modprobe_dir].join(format!("new-{name}"));
        copy_modules(p, &new)?;
        if let Some(old) = state.find(release, name) {
            let old_dir = host.path(&old.dir);
            if old_dir.symlink_metadata().is_ok() {
                let aside = staging[&old.modprobe_dir].join(format!("old-{name}"));
                txn.rename(&old_dir, &aside)?;
            }
        }
        let node_dir = image_dir(&dest.modprobe_dir, release, name);
        let to = host.path(&node_dir);
        txn.create_dirs(to.parent().expect("below the release directory"))?;
        txn.rename(&new, &to)?;
        installed.push(entry(p, o, dest, node_dir));
    }
    for base in &bases {
        depmod(&host.path(base), release)?;
    }
    for p in todo {
        let old = state.find(release, p.name());
        place_firmware(txn, host, p, old)?;
    }
    if let Some((new, old)) = param {
        let h = host.clone();
        txn.step(
            "set firmware_class.path",
            || host.set_firmware_path(&new),
            move || h.set_firmware_path(&old).map_err(|e| e.to_string()),
        )?;
    }
    let mut next = state.clone();
    next.images
        .retain(|i| !(i.release == release && installed.iter().any(|n| n.name == i.name)));
    next.images.extend(installed.iter().cloned());
    txn.write(&State::path(host, &o.state_dir), &next.to_bytes())?;
    Ok(installed)
}

/// For each module directory base: the release directory (created when
/// `create`), a staging directory beside it, and its index guarded.
fn guard_bases(
    txn: &mut Txn,
    host: &Host,
    bases: &BTreeSet<PathBuf>,
    release: &str,
    create: bool,
) -> Result<BTreeMap<PathBuf, PathBuf>, NodeError> {
    let mut staging = BTreeMap::new();
    for base in bases {
        let dir = host.path(base.join("lib/modules").join(release));
        if create {
            txn.create_dirs(&dir)?;
        } else if !dir.is_dir() {
            continue;
        }
        let st = txn.staging(dir.parent().expect("below lib/modules"))?;
        let backup = st.join("index");
        std::fs::create_dir(&backup).map_err(io(&backup))?;
        txn.guard_index(&dir, &backup)?;
        staging.insert(base.clone(), st);
    }
    Ok(staging)
}

/// composer's own directory sees the kernel's modules through `host`, as
/// a KMM image does, so depmod resolves dependencies on them.
fn host_link(
    txn: &mut Txn,
    host: &Host,
    dest: &Destination,
    release: &str,
) -> Result<(), NodeError> {
    let system = host.path(format!("/lib/modules/{release}"));
    let link = host
        .path(dest.modprobe_dir.join("lib/modules").join(release))
        .join("host");
    if system.is_dir() && link.symlink_metadata().is_err() {
        txn.symlink(&system, &link)?;
    }
    Ok(())
}

fn copy_modules(p: &Planned, to: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    for m in &p.verdict.modules {
        let from = p.image.dir.join(&m.file);
        let dst = to.join(&m.file);
        let parent = dst.parent().expect("a file has a parent");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        std::fs::copy(&from, &dst).map_err(io(&from))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).map_err(io(&dst))?;
    }
    Ok(())
}

fn entry(p: &Planned, o: &InstallOptions<'_>, dest: &Destination, dir: PathBuf) -> Installed {
    let r = &p.fetched.reference;
    Installed {
        name: r.name.clone(),
        reference: r.given.clone(),
        resolved: r.resolved.clone(),
        digest: p.fetched.digest.clone(),
        release: o.release.clone(),
        layout: p.image.layout.to_string(),
        modprobe_dir: dest.modprobe_dir.clone(),
        modules: p
            .verdict
            .modules
            .iter()
            .map(|m| InstalledModule {
                name: m.name.clone(),
                path: dir.join(&m.file),
                depends: m.depends.clone(),
                signer: m.signer.clone(),
            })
            .collect(),
        dir,
        firmware_dir: (!p.firmware.is_empty()).then(|| dest.firmware_dir.clone()),
        firmware: p.firmware.iter().map(|f| f.1.clone()).collect(),
    }
}

/// Moves `files` (node paths) into a staging directory beside each one's
/// firmware directory.
fn firmware_aside(
    txn: &mut Txn,
    host: &Host,
    fw_dir: Option<&Path>,
    files: &[PathBuf],
) -> Result<(), NodeError> {
    for f in files {
        let on_node = host.path(f);
        if on_node.symlink_metadata().is_err() {
            continue;
        }
        let dir = fw_dir
            .map(|d| host.path(d))
            .unwrap_or_else(|| on_node.clone());
        let st = txn.staging(dir.parent().expect("a firmware directory has a parent"))?;
        let aside = st.join(format!("old-{}", txn.unique()));
        txn.rename(&on_node, &aside)?;
    }
    Ok(())
}

/// The image's firmware in place of what the image it replaces had.
fn place_firmware(
    txn: &mut Txn,
    host: &Host,
    p: &Planned,
    old: Option<&Installed>,
) -> Result<(), NodeError> {
    if let Some(old) = old {
        firmware_aside(txn, host, old.firmware_dir.as_deref(), &old.firmware)?;
    }
    for (src, dest) in &p.firmware {
        let to = host.path(dest);
        let parent = to.parent().expect("a firmware file has a parent");
        txn.create_dirs(parent)?;
        let st = txn.staging(parent)?;
        let staged = st.join(format!("new-{}", txn.unique()));
        match std::fs::read_link(src) {
            Ok(target) => std::os::unix::fs::symlink(target, &staged).map_err(io(&staged))?,
            Err(_) => {
                std::fs::copy(src, &staged).map_err(io(src))?;
            }
        }
        txn.rename(&staged, &to)?;
    }
    Ok(())
}

/// What `remove` needs.
pub struct RemoveOptions<'a> {
    pub host: &'a Host,
    pub release: String,
    pub state_dir: PathBuf,
    /// Relative local references are taken from here.
    pub cwd: PathBuf,
}

/// Removes the images named (by name or reference) for `o.release`:
/// their modules, firmware and state entries; depmod again. Returns what
/// was removed.
pub fn remove(
    targets: &[String],
    o: &RemoveOptions<'_>,
    on: &dyn Fn(Note),
) -> Result<Vec<Installed>, NodeError> {
    select(&State::read(o.host, &o.state_dir)?, targets, o)?;
    let _lock = lock(&o.host.path(&o.state_dir))?;
    let state = State::read(o.host, &o.state_dir)?;
    let chosen = select(&state, targets, o)?;
    let mut txn = Txn::new();
    match remove_steps(&mut txn, o, &state, &chosen) {
        Ok(()) => {
            txn.commit();
            let running = o.host.running_release().ok().as_deref() == Some(o.release.as_str());
            let loaded = running
                .then(|| o.host.snapshot(&o.release).ok())
                .flatten()
                .unwrap_or_default();
            for i in &chosen {
                on(Note::Info(format!(
                    "{}: removed {}",
                    i.name,
                    i.dir.display()
                )));
                let still: Vec<&str> = i
                    .modules
                    .iter()
                    .filter(|m| loaded.loaded.contains_key(&m.name))
                    .map(|m| m.name.as_str())
                    .collect();
                if !still.is_empty() {
                    on(Note::Warning(format!(
                        "{}: {} stay(s) loaded: the files are gone, not the modules in the kernel (composer kmod unload {})",
                        i.name,
                        still.join(", "),
                        still.join(" ")
                    )));
                }
            }
            Ok(chosen)
        }
        Err(e) => Err(undo(txn, e)),
    }
}

fn remove_steps(
    txn: &mut Txn,
    o: &RemoveOptions<'_>,
    state: &State,
    chosen: &[Installed],
) -> Result<(), NodeError> {
    let (host, release) = (o.host, o.release.as_str());
    let bases: BTreeSet<PathBuf> = chosen.iter().map(|i| i.modprobe_dir.clone()).collect();
    let staging = guard_bases(txn, host, &bases, release, false)?;
    for i in chosen {
        let dir = host.path(&i.dir);
        if let (Some(st), Ok(_)) = (staging.get(&i.modprobe_dir), dir.symlink_metadata()) {
            txn.rename(&dir, &st.join(format!("old-{}", i.name)))?;
        }
    }
    for base in staging.keys() {
        depmod(&host.path(base), release)?;
    }
    for i in chosen {
        firmware_aside(txn, host, i.firmware_dir.as_deref(), &i.firmware)?;
    }
    let mut next = state.clone();
    next.images
        .retain(|i| !(i.release == release && chosen.iter().any(|c| c.name == i.name)));
    txn.write(&State::path(host, &o.state_dir), &next.to_bytes())
}

/// The installed images each target names (image name, reference as
/// given or as read) for the release; a target naming none is an error
/// listing what is installed.
fn select(
    state: &State,
    targets: &[String],
    o: &RemoveOptions<'_>,
) -> Result<Vec<Installed>, NodeError> {
    if targets.is_empty() {
        return Err(NodeError::Input("name an image to remove".into()));
    }
    let release = o.release.as_str();
    let mut chosen: Vec<Installed> = Vec::new();
    let mut unknown = Vec::new();
    for t in targets {
        let resolved = super::source::reference(t, release, &o.cwd, Some("x"))
            .ok()
            .map(|r| r.resolved);
        let matches = |i: &&Installed| {
            i.name == *t || i.reference == *t || Some(&i.resolved) == resolved.as_ref()
        };
        let found: Vec<&Installed> = state
            .images
            .iter()
            .filter(|i| i.release == release)
            .filter(matches)
            .collect();
        if found.is_empty() {
            let elsewhere: Vec<&str> = state
                .images
                .iter()
                .filter(matches)
                .map(|i| i.release.as_str())
                .collect();
            unknown.push(if elsewhere.is_empty() {
                format!("`{t}`")
            } else {
                format!(
                    "`{t}` (installed for kernel {}: pass --kernel-release)",
                    elsewhere.join(", ")
                )
            });
        }
        for i in found {
            if !chosen.iter().any(|c| c.name == i.name) {
                chosen.push(i.clone());
            }
        }
    }
    if unknown.is_empty() {
        return Ok(chosen);
    }
    let here: Vec<&str> = state
        .images
        .iter()
        .filter(|i| i.release == release)
        .map(|i| i.name.as_str())
        .collect();
    Err(NodeError::Input(format!(
        "not installed for kernel {release}: {}; installed: {}",
        unknown.join(", "),
        if here.is_empty() {
            "nothing".to_string()
        } else {
            here.join(", ")
        }
    )))
}
