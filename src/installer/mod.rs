//! The installer: system extension images folded into a base installer
//! image's initramfs, the way Talos' imager does it, into a new installer
//! image.
//!
//! - `initramfs`: splitting, reading and appending to an initramfs
//!   (concatenated newc cpio archives, compressed or not).
//! - `squashfs`: extension trees to squashfs images and back.
//! - `modules`: the kernel release check and the module dependency layer.
//! - `extensions`: manifests, firmware and microcode, `extensions.yaml`.
//! - `image`: the installer image (base layers + an artifacts layer).
//!
//! Invariants:
//! - Every extension passes the validation rules (with module signatures
//!   checked against the certificates built into the base kernel) and
//!   carries modules only for the base kernel's release, or nothing is
//!   written.
//! - All work happens in a staging area beside the output, removed at the
//!   end whatever the outcome; the output appears whole or not at all.
//! - The result depends only on the inputs and the epoch given
//!   (`SOURCE_DATE_EPOCH`): squashfs images, cpio archives, layers and the
//!   image configuration are reproducible.

pub mod extensions;
pub mod image;
pub mod initramfs;
pub mod modules;
pub mod squashfs;

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;

use crate::exec::image::{Fetch, ImageError, resolve, unpack};
use crate::output::extension::ManifestInfo;
use crate::output::publish::Staging;
use crate::sign::verify::Trusted;
use crate::validate::{Context, Kind, Selection, validate};
use initramfs::Initramfs;

/// Why no installer image was made.
#[derive(Debug, thiserror::Error)]
pub enum InstallerError {
    #[error("base installer image: {message}")]
    Base { message: String },
    #[error("system extension `{reference}`: {message}")]
    Extension { reference: String, message: String },
    #[error(
        "{} system extension(s) failed validation\n{}",
        failures.len(),
        failures.join("\n")
    )]
    Rules { failures: Vec<String> },
    #[error(
        "system extension `{extension}` carries modules for kernel {found}, but the base installer's kernel is {base}; rebuild the extension against that kernel (in the same `composer build` as the kernel)"
    )]
    Release {
        extension: String,
        found: String,
        base: String,
    },
    #[error("{0}")]
    Options(String),
    #[error("{tool}: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
}

/// The installer's architecture (Talos' `--arch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    pub fn platform(self) -> &'static str {
        match self {
            Arch::Amd64 => "linux/amd64",
            Arch::Arm64 => "linux/arm64",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Arch, String> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(format!("unknown architecture `{s}`: amd64 or arm64")),
        }
    }
}

/// What to assemble.
pub struct Request<'a> {
    /// The base installer image reference.
    pub base: &'a str,
    /// System extension image references, in layer order.
    pub extensions: &'a [String],
    pub arch: Arch,
    /// Relative local references are taken from here.
    pub cwd: &'a Path,
    pub fetch: Fetch<'a>,
    /// `compatibility.talos.version` must admit this version, when given.
    pub talos_version: Option<String>,
    /// Validation rules not to run.
    pub skip_rules: Vec<String>,
    pub epoch: u64,
}

/// An assembled installer image, waiting in its staging layout.
pub struct Assembled {
    pub staging: Staging,
    pub manifest: Descriptor,
    /// The manifest of each layer of the new initramfs, in layer order.
    pub layers: Vec<ManifestInfo>,
    /// Validation warnings, one line each, prefixed with the extension.
    pub warnings: Vec<String>,
    /// Size of the new initramfs.
    pub initramfs_bytes: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> InstallerError + '_ {
    move |source| InstallerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds the installer image; the staging area lives under `near`.
/// `on` receives one line per step, for progress.
pub fn assemble(
    req: &Request<'_>,
    near: &Path,
    on: &dyn Fn(&str),
) -> Result<Assembled, InstallerError> {
    let selection = Selection {
        only: Vec::new(),
        skip: req.skip_rules.clone(),
    };
    crate::validate::select(Kind::Extension, &selection)
        .map_err(|e| InstallerError::Options(format!("--skip-rule: {e}")))?;
    let staging = Staging::new(near)?;
    let arch = req.arch.name();

    // The base installer image.
    let base = resolve(req.base, req.cwd, req.arch.platform(), &req.fetch)?;
    let base_root = staging.scratch("base");
    unpack(&base, &base_root)?;
    let install = base_root.join("usr/install").join(arch);
    let (vmlinuz, initrd) = (install.join("vmlinuz"), install.join("initramfs.xz"));
    if !vmlinuz.is_file() || !initrd.is_file() {
        let found: Vec<String> = fs::read_dir(base_root.join("usr/install"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        return Err(InstallerError::Base {
            message: format!(
                "`{}` has no usr/install/{arch}/vmlinuz and initramfs.xz{}",
                req.base,
                if found.is_empty() {
                    " (not an installer image?)".to_string()
                } else {
                    format!(" (it has usr/install/ for: {})", found.join(", "))
                }
            ),
        });
    }
    let base_initrd = Initramfs::read(&initrd)?;
    // Needed only when an extension carries modules; a kernel that cannot
    // be read is an error then, with this reason.
    let (trusted, unreadable) = match Trusted::read_kernel(&vmlinuz) {
        Ok(t) => (t, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    on(&format!(
        "base {} ({}): initramfs {} ({} bytes), kernel trusts {} module signing key(s)",
        req.base,
        base.digest,
        base_initrd.compression.name(),
        base_initrd.bytes.len(),
        trusted.len()
    ));

    // The extensions: unpacked, then validated all together.
    let mut exts = Vec::new();
    for (i, r) in req.extensions.iter().enumerate() {
        let resolved = resolve(r, req.cwd, req.arch.platform(), &req.fetch)?;
        let root = staging.scratch(&format!("ext-{i}"));
        unpack(&resolved, &root)?;
        exts.push(extensions::load(r, &root)?);
    }
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    let ctx = Context {
        kind: Kind::Extension,
        package: None,
        trusted,
        // Extension modules may depend on the base kernel's modules.
        allow_in_tree_deps: true,
        secret_patterns: Vec::new(),
        talos_version: req.talos_version.clone(),
        kernel_trees: Default::default(),
    };
    for e in &exts {
        let report =
            validate(&e.root, &ctx, &selection).map_err(|err| InstallerError::Extension {
                reference: e.reference.clone(),
                message: err.to_string(),
            })?;
        for w in report.warnings() {
            warnings.push(format!("{}: {w}", e.info.name));
        }
        if report.has_errors() {
            let lines: Vec<String> = report.errors().map(|f| format!("  {f}")).collect();
            failures.push(format!(
                "{} ({}): {}\n{}",
                e.info.name,
                e.reference,
                report.summary(),
                lines.join("\n")
            ));
        }
    }
    if !failures.is_empty() {
        return Err(InstallerError::Rules { failures });
    }

    // Kernel modules: the release check and the dependency layer.
    let with_modules: Vec<&extensions::Extension> = exts
        .iter()
        .filter(|e| !modules::releases(&e.root).is_empty())
        .collect();
    let mut release = None;
    let mut dependency = None;
    if !with_modules.is_empty() {
        if ctx.trusted.is_empty() {
            return Err(InstallerError::Base {
                message: format!(
                    "its kernel trusts no module signing key{}, so the modules of {} cannot load",
                    unreadable
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                    with_modules
                        .iter()
                        .map(|e| e.info.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let sqsh = staging.scratch("rootfs.sqsh");
        if !base_initrd.extract("rootfs.sqsh", &sqsh)? {
            return Err(InstallerError::Base {
                message: "its initramfs holds no rootfs.sqsh, so its modules cannot be indexed"
                    .into(),
            });
        }
        let base_modules = staging.scratch("base-modules");
        squashfs::extract(&sqsh, "usr/lib/modules", &base_modules)?;
        let mut rels: Vec<String> = fs::read_dir(base_modules.join("usr/lib/modules"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        rels.sort();
        let rel = match rels.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(InstallerError::Base {
                    message: "rootfs.sqsh has no /usr/lib/modules/<release>: the kernel release is unknown".into(),
                });
            }
            many => {
                return Err(InstallerError::Base {
                    message: format!(
                        "rootfs.sqsh has modules for several kernels: {}",
                        many.join(", ")
                    ),
                });
            }
        };
        for e in &with_modules {
            modules::check_release(&e.info.name, &e.root, &rel)?;
        }
        let roots: Vec<PathBuf> = with_modules.iter().map(|e| e.root.clone()).collect();
        let dep = modules::dependency_extension(
            &base_modules,
            &roots,
            &rel,
            &staging.scratch("modules-dep"),
        )?;
        on(&format!(
            "modules: {} extension(s) with modules for {rel}; depmod over the base's and theirs",
            with_modules.len()
        ));
        dependency = Some(dep);
        release = Some(rel);
    }

    // Squashfs layers, firmware and microcode, extensions.yaml.
    let append = staging.scratch("append");
    let early = staging.scratch("early");
    fs::create_dir_all(&append).map_err(io(&append))?;
    let mut ucode = false;
    let mut yaml_layers = Vec::new();
    let mut layers = Vec::new();
    let mut squash = |rootfs: &Path, info: ManifestInfo, metadata: String| {
        let image = format!("{}.sqsh", layers.len());
        let path = append.join(&image);
        squashfs::create(rootfs, &path, req.epoch)?;
        let bytes = fs::metadata(&path).map_err(io(&path))?.len();
        on(&format!(
            "squashfs {image}: {} {} ({bytes} bytes)",
            info.name, info.version
        ));
        yaml_layers.push((image, metadata));
        layers.push(info);
        Ok::<(), InstallerError>(())
    };
    for e in &exts {
        ucode |= extensions::move_to_initramfs(e, &append, &early, req.arch == Arch::Amd64)?;
        squash(&e.root.join("rootfs"), e.info.clone(), e.metadata.clone())?;
    }
    if let (Some(dep), Some(rel)) = (&dependency, &release) {
        let info = ManifestInfo {
            name: "modules.dep".into(),
            version: rel.clone(),
            description: "kernel module dependencies of the system extensions".into(),
            author: "composer".into(),
        };
        squash(
            &dep.join("rootfs"),
            info,
            extensions::dependency_metadata(rel),
        )?;
    }
    let yaml = append.join("extensions.yaml");
    fs::write(&yaml, extensions::extensions_yaml(&yaml_layers)).map_err(io(&yaml))?;

    // The new initramfs: [microcode] + base + compressed(append).
    let cpio = initramfs::write_tree(&append, Vec::new(), req.epoch)?;
    let compressed = initramfs::compress(&cpio, base_initrd.compression)?;
    let mut bytes = Vec::with_capacity(base_initrd.bytes.len() + compressed.len());
    if ucode {
        bytes = initramfs::write_tree(&early, bytes, req.epoch)?;
        on("early CPU microcode prepended");
    }
    bytes.extend_from_slice(&base_initrd.bytes);
    bytes.extend_from_slice(&compressed);

    let artifacts = staging.scratch("artifacts");
    let out_dir = artifacts.join("usr/install").join(arch);
    fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    fs::copy(&vmlinuz, out_dir.join("vmlinuz")).map_err(io(&vmlinuz))?;
    let new_initrd = out_dir.join("initramfs.xz");
    fs::write(&new_initrd, &bytes).map_err(io(&new_initrd))?;
    on(&format!(
        "initramfs.xz: {} bytes ({} appended, {})",
        bytes.len(),
        compressed.len(),
        base_initrd.compression.name()
    ));
    let manifest = image::write(&staging.layout, &base, &artifacts, req.epoch)?;
    Ok(Assembled {
        staging,
        manifest,
        layers,
        warnings,
        initramfs_bytes: bytes.len() as u64,
    })
}
