//! `composer kmod unit NAME REF [-o FILE|DIR]`: the systemd unit that
//! installs and loads an image at boot and unloads it on stop
//! (`node::unit`), printed or written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::{CliError, CliResult, LoadOptions};
use crate::node::unit::{UnitOptions, unit, unit_file_name};

pub const UNIT_HELP: &str = "\
The unit (Type=oneshot, RemainAfterExit=yes, after network-online.target, wanted by
multi-user.target) runs `composer kmod install REF --name NAME --load ...` when it starts and
`composer kmod unload --image NAME` when it stops, like Forklift's and modulus' units.
${KERNEL_FULL_VERSION} in REF is written $${KERNEL_FULL_VERSION} so that systemd passes it to
composer, which replaces it with the release that booted. Arguments are quoted for systemd;
a local reference (oci:, oci-archive:, docker-archive:) and --cert, --kernel, --state-dir and
--cache-dir paths are made absolute. `systemd-analyze verify FILE` accepts the unit.

Examples:
  composer kmod unit hello 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' -o /etc/systemd/system/
  systemctl daemon-reload && systemctl enable --now composer-kmod-hello.service
  composer kmod unit nvidia 'ghcr.io/org/nvidia:${KERNEL_FULL_VERSION}' --cert /etc/mok.pem \\
      --param nvidia.NVreg_EnableGpuFirmware=0 > composer-kmod-nvidia.service

Without -o the unit is printed; -o DIR writes DIR/composer-kmod-NAME.service.";

#[derive(Args, Debug)]
pub struct UnitArgs {
    /// The unit's name (composer-kmod-NAME.service) and the installed
    /// image's.
    pub name: String,
    /// The image reference to install at boot (`${KERNEL_FULL_VERSION}`
    /// kept for composer to replace).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Write the unit to this file, or into this directory.
    #[arg(short, long, value_name = "FILE|DIR")]
    pub output: Option<PathBuf>,
    /// The composer binary the unit runs (default: this one).
    #[arg(long, value_name = "PATH")]
    pub composer: Option<PathBuf>,
    /// A certificate for `install --cert`; repeatable.
    #[arg(long = "cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,
    /// A kernel image for `install --kernel`; repeatable.
    #[arg(long = "kernel", value_name = "FILE")]
    pub kernels: Vec<PathBuf>,
    /// composer's state directory for the unit's install and unload
    /// (default: theirs, /var/lib/composer).
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The image cache for the unit's install (default: its,
    /// /var/cache/composer/kmod).
    #[arg(long = "cache-dir", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Allow plain HTTP to the registry.
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub load: LoadOptions,
}

fn absolute(cwd: &Path, p: &Path) -> String {
    cwd.join(p).display().to_string()
}

/// `reference` checked as install will read it (any release), with a
/// relative local path made absolute: the unit runs from `/`.
fn reference(cwd: &Path, reference: &str) -> Result<String, CliError> {
    // The unit's name is checked by `unit`.
    crate::node::source::reference(reference, "0.0.0", cwd, Some("unit"))
        .map_err(|e| CliError::User(e.into()))?;
    for scheme in ["oci:", "oci-archive:", "docker-archive:"] {
        if let Some(path) = reference.strip_prefix(scheme)
            && !path.starts_with('/')
        {
            return Ok(format!("{scheme}{}", absolute(cwd, Path::new(path))));
        }
    }
    Ok(reference.to_string())
}

/// The arguments of install and unload.
fn arguments(cwd: &Path, a: &UnitArgs) -> (Vec<String>, Vec<String>) {
    let mut install = Vec::new();
    let mut unload = Vec::new();
    for c in &a.certs {
        install.extend(["--cert".to_string(), absolute(cwd, c)]);
    }
    for k in &a.kernels {
        install.extend(["--kernel".to_string(), absolute(cwd, k)]);
    }
    if let Some(d) = &a.cache_dir {
        install.extend(["--cache-dir".to_string(), absolute(cwd, d)]);
    }
    if let Some(d) = &a.state_dir {
        let d = absolute(cwd, d);
        install.extend(["--state-dir".to_string(), d.clone()]);
        unload.extend(["--state-dir".to_string(), d]);
    }
    if a.insecure {
        install.push("--insecure".into());
    }
    for p in &a.load.params {
        install.extend(["--param".to_string(), p.to_string()]);
    }
    for r in &a.load.replace_in_tree {
        install.extend(["--replace-in-tree".to_string(), r.clone()]);
    }
    (install, unload)
}

pub fn run(cwd: &Path, a: &UnitArgs) -> CliResult {
    let composer = match &a.composer {
        Some(c) => cwd.join(c),
        None => std::env::current_exe().map_err(|e| CliError::Internal(e.into()))?,
    };
    let (install_args, unload_args) = arguments(cwd, a);
    let opts = UnitOptions {
        composer,
        install_args,
        unload_args,
    };
    let text = unit(&a.name, &reference(cwd, &a.reference)?, &opts)
        .map_err(|e| CliError::User(e.into()))?;
    let Some(out) = &a.output else {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    };
    let out = cwd.join(out);
    let file = if out.is_dir() {
        out.join(unit_file_name(&a.name))
    } else {
        out
    };
    write(&file, text.as_bytes())?;
    eprintln!(
        "wrote {}; start it at boot: systemctl daemon-reload && systemctl enable --now {}",
        file.display(),
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the unit whole (a temporary file renamed over), mode 0644.
fn write(file: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: crate::node::NodeError| CliError::User(e.into());
    crate::node::state::write_atomically(file, bytes).map_err(fail)?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).map_err(|source| {
        fail(crate::node::NodeError::Io {
            path: file.to_path_buf(),
            source,
        })
    })
}
