//! The signing session's hooks into a build (`exec::SessionHooks`): the
//! kernel configuration check after `prepare`; after `install`, the kernel
//! images a stage produces (`rootfs/boot/vmlinuz*`) must trust the
//! session's certificate and no other, then every module is signed. The session itself is made lazily by the build, the first
//! time a session stage must run, and shared here through a `OnceLock`.

use std::path::Path;
use std::sync::OnceLock;

use super::config;
use super::session::Session;
use super::tree::sign_tree;
use super::verify::Trusted;
use crate::exec::SessionHooks;

pub struct Hooks<'a> {
    pub session: &'a OnceLock<Session>,
    /// `--sign-in-tree`: the kernel may sign during `modules_install`.
    pub in_tree: bool,
}

impl Hooks<'_> {
    fn session(&self) -> Result<&Session, String> {
        self.session
            .get()
            .ok_or_else(|| "no signing session was started for this stage".to_string())
    }
}

impl SessionHooks for Hooks<'_> {
    fn after_prepare(&self, root: &Path) -> Result<(), String> {
        let s = self.session()?;
        config::check(root, s.key_type(), self.in_tree, s.cert_der().len())
    }

    fn after_install(&self, root: &Path) -> Result<usize, String> {
        let s = self.session()?;
        check_kernel_images(root, s)?;
        sign_tree(root, s)
            .map(|m| m.len())
            .map_err(|e| e.to_string())
    }
}

/// Every kernel image under `<root>/rootfs/boot` (what a kernel stage
/// installs) trusts exactly the session's certificate: a kernel holding
/// another one, or none, would not meet its modules' signatures alone.
fn check_kernel_images(root: &Path, s: &Session) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(root.join("rootfs/boot")) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vmlinuz") || !path.is_file() {
            continue;
        }
        let shown = format!("/rootfs/boot/{name}");
        let certs = Trusted::read_kernel(&path)
            .map_err(|e| e.replace(&path.display().to_string(), &shown))?;
        let ders: Vec<Vec<u8>> = certs.iter().map(Trusted::der).collect::<Result<_, _>>()?;
        if ders.len() != 1 || ders[0] != s.cert_der() {
            let subjects: Vec<String> = certs.iter().map(Trusted::subject).collect();
            return Err(format!(
                "{shown} trusts {} certificate(s) ({}), not exactly the session's: the session's certificate was not written into this kernel",
                certs.len(),
                subjects.join("; ")
            ));
        }
    }
    Ok(())
}
