//! The signing session's hooks into a build (`exec::SessionHooks`): the
//! kernel configuration check after `prepare`, module signing after
//! `install`. The session itself is made lazily by the build, the first
//! time a session stage must run, and shared here through a `OnceLock`.

use std::path::Path;
use std::sync::OnceLock;

use super::config;
use super::session::Session;
use super::tree::sign_tree;
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
        config::check(root, s.key_type(), self.in_tree)
    }

    fn after_install(&self, root: &Path) -> Result<usize, String> {
        let s = self.session()?;
        sign_tree(root, s)
            .map(|m| m.len())
            .map_err(|e| e.to_string())
    }
}
