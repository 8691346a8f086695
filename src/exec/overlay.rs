//! Stage roots as overlay mounts: a stage's whole-tree inputs (a
//! dependency's complete output merged at `/`, the common case: a kernel
//! build tree handed to the stages that install it or build modules
//! against it) become read-only lower layers of an overlayfs, and
//! everything the stage writes lands in an upper directory of its own work
//! directory. The inputs are then neither copied nor touched: a dependant
//! of a 1.6 GB kernel tree starts at once and costs only what it writes.
//!
//! Invariants:
//! - Lower layers are cache entries and unpacked images, which never
//!   change: overlayfs copies a file up before the first write, so a stage
//!   can never alter what it was given (a `make` rewriting an object in
//!   place writes the upper copy).
//! - The mount lives in a mount namespace private to the stage's thread
//!   (`unshare(CLONE_NEWNS)` on that thread, propagation made slave): the
//!   host never sees it, the sandboxes the thread starts inherit it, and it
//!   disappears with the thread or the process, so a killed build leaves no
//!   mount behind. [`Overlay`] unmounts it when dropped, before the work
//!   directory is removed.
//! - The view is the one a copy would give (later inputs over earlier ones,
//!   a later file or symlink hiding an earlier directory); only the way
//!   there differs. Rootless builds copy. When an overlay cannot be made
//!   as root (a path overlayfs options cannot spell, a filesystem that
//!   refuses to be an upper layer), the caller copies instead and says why.
//! - The `unsafe` block here is the `unshare` of the thread's mount
//!   namespace; every other namespace is the sandbox's (bubblewrap).

use std::cell::Cell;
use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::UnshareFlags;

/// Longest option string handed to mount(2): the kernel copies one page.
const MAX_OPTIONS: usize = 4000;

thread_local! {
    /// Whether this thread already has its own mount namespace.
    static PRIVATE_NAMESPACE: Cell<bool> = const { Cell::new(false) };
}

/// A stage root mounted as an overlay; unmounted when dropped.
#[derive(Debug)]
pub struct Overlay {
    root: PathBuf,
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.root, UnmountFlags::DETACH);
    }
}

/// Mounts at `root` an overlay of `lowers` (bottom layer first), with its
/// upper and work directories under `work`. Every path must exist.
/// `Ok(None)` when there is nothing to layer or overlays are not for this
/// process (not root: rootless builds copy); `Err` says why an overlay
/// that should have worked could not be made. Nothing is mounted then.
pub fn mount(work: &Path, root: &Path, lowers: &[PathBuf]) -> Result<Option<Overlay>, String> {
    if lowers.is_empty() || !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let upper = work.join("upper");
    let scratch = work.join("overlay-work");
    for d in [&upper, &scratch] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let options = options(lowers, &upper, &scratch)?;
    let data = CString::new(options).map_err(|_| "a path holds a NUL byte".to_string())?;
    private_namespace()?;
    rustix::mount::mount("overlay", root, "overlay", MountFlags::empty(), &*data)
        .map_err(|e| format!("mounting an overlay at {}: {e}", root.display()))?;
    Ok(Some(Overlay {
        root: root.to_path_buf(),
    }))
}

/// The option string: `lowerdir=top:...:bottom,upperdir=..,workdir=..`,
/// every path absolute. A layer given twice is kept at its last (highest)
/// place, which is what copying it twice would show; overlayfs refuses
/// the same directory twice.
fn options(lowers: &[PathBuf], upper: &Path, scratch: &Path) -> Result<String, String> {
    let mut lower: Vec<String> = Vec::with_capacity(lowers.len());
    for l in lowers.iter().rev() {
        let l = spell(l)?;
        if !lower.contains(&l) {
            lower.push(l);
        }
    }
    let s = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        spell(upper)?,
        spell(scratch)?
    );
    if s.len() > MAX_OPTIONS {
        return Err(format!(
            "{} input layers make mount options longer than a page",
            lowers.len()
        ));
    }
    Ok(s)
}

/// `path` made absolute, refused when overlayfs' option syntax cannot
/// carry it (`,`, `:` and `\` are separators or escapes there).
fn spell(path: &Path) -> Result<String, String> {
    let abs = fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s = abs
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", abs.display()))?;
    if s.contains([',', ':', '\\']) {
        return Err(format!(
            "{s} holds `,`, `:` or `\\`, which overlayfs options cannot carry"
        ));
    }
    Ok(s.to_string())
}

/// Gives the calling thread a mount namespace of its own, once, whose
/// mounts do not propagate back to the host.
fn private_namespace() -> Result<(), String> {
    if PRIVATE_NAMESPACE.with(Cell::get) {
        return Ok(());
    }
    // SAFETY: CLONE_NEWNS (which implies CLONE_FS) only gives this thread
    // its own copy of the mount table, working directory, root and umask.
    // Nothing in the process caches those per thread, and the thread keeps
    // using paths that resolve the same in the copy.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }
        .map_err(|e| format!("a private mount namespace: {e}"))?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;
    PRIVATE_NAMESPACE.with(|c| c.set(true));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_the_top_layer_first_with_absolute_paths() {
        let d = tempfile::tempdir().unwrap();
        for n in ["a", "b", "u", "w"] {
            fs::create_dir(d.path().join(n)).unwrap();
        }
        let base = fs::canonicalize(d.path()).unwrap();
        let s = options(
            &[d.path().join("a"), d.path().join("b")],
            &d.path().join("u"),
            &d.path().join("w"),
        )
        .unwrap();
        let b = base.display();
        assert_eq!(
            s,
            format!("lowerdir={b}/b:{b}/a,upperdir={b}/u,workdir={b}/w")
        );
    }

    #[test]
    fn a_layer_given_twice_stays_only_at_its_highest_place() {
        let d = tempfile::tempdir().unwrap();
        for n in ["a", "b", "u", "w"] {
            fs::create_dir(d.path().join(n)).unwrap();
        }
        let b = fs::canonicalize(d.path()).unwrap();
        let b = b.display();
        let (a, bb) = (d.path().join("a"), d.path().join("b"));
        let s = options(
            &[a.clone(), bb, a],
            &d.path().join("u"),
            &d.path().join("w"),
        )
        .unwrap();
        assert!(s.starts_with(&format!("lowerdir={b}/a:{b}/b,")), "{s}");
    }

    #[test]
    fn paths_overlayfs_cannot_spell_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let odd = d.path().join("a:b");
        fs::create_dir(&odd).unwrap();
        let e = spell(&odd).unwrap_err();
        assert!(e.contains("cannot carry"), "{e}");
    }
}
