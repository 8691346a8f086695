//! The shell a stage's script items run in.
//!
//! Invariants: a `shell:` written in `pkg.yaml` is used as written. Without
//! one, a `variant: host` stage runs in the host's `/bin/bash` when the host
//! has it (every item starts with `set -eou pipefail`, which Debian's
//! `/bin/sh`, dash, refuses), every other stage in bldr's `/bin/sh`. The
//! cache key takes the shell this returns, so a host that gains or loses
//! bash rebuilds its host stages.

use std::fs;
use std::path::Path;

use crate::defs::schema::{Pkg, Variant};

/// bldr's shell when `pkg.yaml` names none.
pub const DEFAULT_SHELL: &str = "/bin/sh";
/// The default shell of `variant: host`, when the host has it.
pub const HOST_SHELL: &str = "/bin/bash";

/// The shell a stage's items run in: `shell:` as written; else, for
/// `variant: host`, the host's [`HOST_SHELL`] when `host_root` (`/` but in
/// tests) has it, since Debian's `/bin/sh` is dash, which has no
/// `set -o pipefail`; else [`DEFAULT_SHELL`].
pub fn shell_of(pkg: &Pkg, host_root: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    if let Some(shell) = &pkg.shell {
        return shell.clone();
    }
    let host_shell = host_root.join(HOST_SHELL.trim_start_matches('/'));
    let has_host_shell =
        fs::metadata(host_shell).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if pkg.variant == Variant::Host && has_host_shell {
        HOST_SHELL.to_string()
    } else {
        DEFAULT_SHELL.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::{Span, Spanned};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn pkg(variant: Variant, shell: Option<&str>) -> Pkg {
        let file: Arc<Path> = Arc::from(Path::new("pkg.yaml"));
        Pkg {
            name: Spanned {
                value: "s".into(),
                span: Span::file_start(&file),
            },
            variant,
            shell: shell.map(str::to_string),
            build_platform: None,
            install: Vec::new(),
            dependencies: Vec::new(),
            steps: Vec::new(),
            finalize: Vec::new(),
            dir: PathBuf::from("."),
        }
    }

    /// A host root whose `bin/bash` has the given mode, or none.
    fn host_root(bash_mode: Option<u32>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("bin")).unwrap();
        if let Some(mode) = bash_mode {
            let bash = dir.path().join("bin/bash");
            fs::write(&bash, "").unwrap();
            fs::set_permissions(&bash, fs::Permissions::from_mode(mode)).unwrap();
        }
        dir
    }

    #[test]
    fn host_stage_without_shell_runs_in_the_hosts_bash() {
        let root = host_root(Some(0o755));
        assert_eq!(
            shell_of(&pkg(Variant::Host, None), root.path()),
            "/bin/bash"
        );
    }

    #[test]
    fn host_stage_without_shell_falls_back_to_sh_when_the_host_has_no_bash() {
        for root in [host_root(None), host_root(Some(0o644))] {
            assert_eq!(shell_of(&pkg(Variant::Host, None), root.path()), "/bin/sh");
        }
    }

    #[test]
    fn explicit_shell_is_honoured_and_other_variants_keep_bldrs_default() {
        let root = host_root(Some(0o755));
        assert_eq!(
            shell_of(&pkg(Variant::Host, Some("/bin/sh")), root.path()),
            "/bin/sh"
        );
        assert_eq!(
            shell_of(&pkg(Variant::Scratch, Some("/bin/ash")), root.path()),
            "/bin/ash"
        );
        assert_eq!(
            shell_of(&pkg(Variant::Scratch, None), root.path()),
            "/bin/sh"
        );
    }
}
