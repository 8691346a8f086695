//! What `composer kmod load`, `unload` and `install --load` ask of the
//! node, carried out: the node's index ([`node_index`]: the installed
//! images' module directories, then the system's, or `--base`), a
//! [`Snapshot`](super::Snapshot) of the kernel, a plan, then the kernel's
//! calls. `--image NAME` stands for the modules of an installed image.
//!
//! An unload needs no module directory: without one for the release (and
//! no `--base`), the kernel's list of loaded modules is enough.
//!
//! Invariant: every check (unknown module, parameter, holder) is made
//! before the first call to the kernel; a load's unknown name is said
//! before the kernel's state is read.

use std::path::{Path, PathBuf};

use super::index::{Index, node_index};
use super::load::{Done, LoadError, LoadRequest, load, plan_load};
use super::state::{Installed, State};
use super::unload::{plan_unload, unload};
use super::{Host, NodeError};

/// Where the modules are looked up.
#[derive(Clone, Debug)]
pub struct Lookup<'a> {
    pub host: &'a Host,
    /// composer's state directory on the node (node path).
    pub state_dir: PathBuf,
    pub release: String,
    /// A module directory to use instead of the installed images' (node
    /// path: modules in `<base>/lib/modules/<release>/`).
    pub base: Option<PathBuf>,
}

/// Loads `req.modules` and what they need, in dependency order.
pub fn load_modules(
    l: &Lookup<'_>,
    req: &LoadRequest,
    report: &mut dyn FnMut(&Done),
) -> Result<(), NodeError> {
    let index = node_index(l.host, &l.state_dir, &l.release, l.base.as_deref())?;
    index.check(&req.modules)?;
    let snap = l.host.snapshot(&l.release)?;
    let plan = plan_load(&index, &snap, req)?;
    load(l.host, &plan, report)?;
    Ok(())
}

/// Unloads `names` and the modules of the images `images`, with the
/// loaded modules that need them first.
pub fn unload_modules(
    l: &Lookup<'_>,
    names: &[String],
    images: &[String],
    report: &mut dyn FnMut(&Done),
) -> Result<(), NodeError> {
    let mut all = names.to_vec();
    if !images.is_empty() {
        let state = State::read(l.host, &l.state_dir)?;
        all.extend(image_modules(&state, &l.release, images, &l.state_dir)?);
    }
    let index = match node_index(l.host, &l.state_dir, &l.release, l.base.as_deref()) {
        // No module directory for the release: the kernel's own list is
        // enough to unload what it has.
        Err(NodeError::Load(LoadError::NoRelease { .. } | LoadError::NoIndex { .. }))
            if l.base.is_none() =>
        {
            Index::merge(Vec::new())
        }
        r => r?,
    };
    let snap = l.host.snapshot(&l.release)?;
    let plan = plan_unload(&index, &snap, &all)?;
    unload(l.host, &plan, report)?;
    Ok(())
}

/// The modules of the installed images `images` for `release`, each
/// image's in load order.
pub fn image_modules(
    state: &State,
    release: &str,
    images: &[String],
    state_dir: &Path,
) -> Result<Vec<String>, NodeError> {
    let mut out = Vec::new();
    for name in images {
        let Some(i) = state.find(release, name) else {
            let have: Vec<&str> = state
                .images
                .iter()
                .filter(|i| i.release == release)
                .map(|i| i.name.as_str())
                .collect();
            return Err(NodeError::Input(format!(
                "no image `{name}` is installed for kernel {release} in {} (installed: {})",
                state_dir.display(),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            )));
        };
        out.extend(modules_of(i));
    }
    Ok(out)
}

/// The modules of `installed`, in load order.
pub fn modules_of(installed: &Installed) -> impl Iterator<Item = String> + '_ {
    installed.modules.iter().map(|m| m.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::state::InstalledModule;

    fn image(name: &str, release: &str, modules: &[&str]) -> Installed {
        Installed {
            name: name.into(),
            reference: format!("oci:/i/{name}"),
            resolved: format!("oci:/i/{name}"),
            digest: "sha256:00".into(),
            release: release.into(),
            layout: "image".into(),
            modprobe_dir: "/".into(),
            dir: format!("/lib/modules/{release}/updates/composer/{name}").into(),
            modules: modules
                .iter()
                .map(|m| InstalledModule {
                    name: m.to_string(),
                    path: format!("/x/{m}.ko").into(),
                    depends: vec![],
                    signer: None,
                })
                .collect(),
            firmware_dir: None,
            firmware: vec![],
        }
    }

    #[test]
    fn an_image_stands_for_its_modules_of_that_release() {
        let state = State {
            version: 1,
            images: vec![
                image("hello", "6.1.0", &["hello_pcie", "hello_user"]),
                image("hello", "6.1.1", &["other"]),
            ],
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            image_modules(&state, "6.1.0", &names(&["hello"]), Path::new("/s")).unwrap(),
            ["hello_pcie", "hello_user"]
        );
        let e = image_modules(&state, "6.1.0", &names(&["helo"]), Path::new("/s"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no image `helo` is installed for kernel 6.1.0 in /s (installed: hello)"
        );
    }
}
