//! `composer image-installer`: Talos' `imager installer` flags, the work
//! done by `installer::assemble`, the result written as a docker-archive
//! (and pushed when asked). Printing only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::build::{default_cache_dir, source_date_epoch};
use super::{CliError, CliResult};
use crate::exec::image::Fetch;
use crate::installer::{Arch, Assembled, Request, assemble};
use crate::oci::reference::{RegistryRef, parse_registry};
use crate::oci::registry::{self, RegistryOptions};
use crate::output::archive::to_docker_archive;
use crate::output::extension::ManifestInfo;

#[derive(Args, Debug)]
pub struct ImageInstallerArgs {
    /// The base installer image (`oci:DIR:TAG`, `oci-archive:FILE`,
    /// `docker-archive:FILE` or a registry reference), holding
    /// usr/install/<arch>/vmlinuz and initramfs.xz.
    #[arg(long = "base-installer-image", value_name = "REF")]
    pub base: String,
    /// A system extension image to add (repeatable; layers stack in this
    /// order, the last on top).
    #[arg(long = "system-extension-image", value_name = "REF")]
    pub extensions: Vec<String>,
    /// The installer's architecture.
    #[arg(long, default_value = "amd64", value_parser = clap::value_parser!(ArchArg))]
    pub arch: ArchArg,
    /// The docker-archive to write (default: _out/installer-<arch>.tar).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The name `docker load` / `podman load` give the image.
    #[arg(long = "image-name", value_name = "NAME:TAG")]
    pub image_name: Option<String>,
    /// Also require every extension's compatibility.talos.version to admit
    /// this Talos version (e.g. v1.9.0).
    #[arg(long = "talos-version", value_name = "VERSION")]
    pub talos_version: Option<String>,
    /// Do not run this validation rule on the extensions (repeatable).
    #[arg(long = "skip-rule", value_name = "RULE")]
    pub skip_rules: Vec<String>,
    /// Also push the installer image to this registry reference
    /// (REGISTRY/REPO:TAG).
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// With --push: replace the tag when the registry holds another image
    /// under it. Without it that push fails before anything is written.
    #[arg(long, requires = "push")]
    pub overwrite_existing: bool,
    /// Allow plain HTTP to registries (loopback test registries).
    #[arg(long)]
    pub insecure: bool,
    /// Never pull: registry images must have been pulled before.
    #[arg(long)]
    pub offline: bool,
    /// The cache directory (pulled and unpacked images).
    #[arg(long = "cache-dir", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// `--arch` as clap parses it.
#[derive(Clone, Copy, Debug)]
pub struct ArchArg(pub Arch);

impl std::str::FromStr for ArchArg {
    type Err = String;
    fn from_str(s: &str) -> Result<ArchArg, String> {
        s.parse().map(ArchArg)
    }
}

/// Where pulled images are kept: the cache's `images/`, created.
fn image_store(args: &ImageInstallerArgs) -> Result<PathBuf, CliError> {
    let store = args
        .cache_dir
        .clone()
        .unwrap_or_else(default_cache_dir)
        .join("images");
    std::fs::create_dir_all(&store).map_err(|e| {
        CliError::User(anyhow::anyhow!(
            "the cache directory {}: {e}",
            store.display()
        ))
    })?;
    Ok(store)
}

/// The NAME / VERSION / AUTHOR table of the installer's layers.
fn print_layers(layers: &[ManifestInfo]) {
    let name_w = layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let ver_w = layers
        .iter()
        .map(|l| l.version.len())
        .max()
        .unwrap_or(7)
        .max(7);
    println!("{:<name_w$}  {:<ver_w$}  AUTHOR", "NAME", "VERSION");
    for l in layers {
        println!("{:<name_w$}  {:<ver_w$}  {}", l.name, l.version, l.author);
    }
}

/// Pushes the assembled installer to `reference` (`p` as given).
fn push_installer(
    args: &ImageInstallerArgs,
    done: &Assembled,
    p: &str,
    reference: RegistryRef,
) -> Result<(), CliError> {
    let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
    done.staging
        .layout
        .set_tag(&done.manifest, &tag)
        .map_err(|e| CliError::User(e.into()))?;
    let opts = RegistryOptions {
        insecure: args.insecure,
        ..RegistryOptions::default()
    };
    let pushed = registry::push(&done.staging.layout, Some(&tag), &reference, &opts, &|_| {})
        .map_err(|e| CliError::User(anyhow::Error::new(e).context(format!("pushing {p}"))))?;
    println!("installer\tpushed\t{p}\t{}", pushed.digest);
    Ok(())
}

pub fn run(args: &ImageInstallerArgs) -> CliResult {
    let arch = args.arch.0;
    let epoch = source_date_epoch(&[])?.unwrap_or(0).max(0) as u64;
    // Checked before any work: a mistyped --push must not cost a build.
    let push = match &args.push {
        Some(p) => Some((
            p,
            parse_registry(p).map_err(|e| CliError::user(format!("--push {p}: {e}")))?,
        )),
        None => None,
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("_out/installer-{}.tar", arch.name())));
    let near = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let cwd = std::env::current_dir().map_err(|e| CliError::Internal(e.into()))?;
    let store = image_store(args)?;
    let req = Request {
        base: &args.base,
        extensions: &args.extensions,
        arch,
        cwd: &cwd,
        fetch: Fetch {
            store: &store,
            offline: args.offline,
            insecure: args.insecure,
        },
        talos_version: args.talos_version.clone(),
        skip_rules: args.skip_rules.clone(),
        epoch,
    };
    let started = std::time::Instant::now();
    let done = assemble(&req, &near, &|line| eprintln!("image-installer: {line}"))
        .map_err(|e| CliError::User(anyhow::Error::new(e).context("no installer image written")))?;
    for w in &done.warnings {
        eprintln!("warning: {w}");
    }
    print_layers(&done.layers);
    // Checked before anything is written: an existing tag naming another
    // image is not replaced unless asked.
    let push = match push {
        Some((p, reference)) => {
            let tag = reference.tag.as_deref().unwrap_or("latest");
            let new = super::existing::before_installer_push(
                &reference.with_tag(tag),
                done.manifest.digest(),
                args.overwrite_existing,
                args.insecure,
            )?;
            Some((p, reference, new))
        }
        None => None,
    };
    let repo_tag = args
        .image_name
        .clone()
        .unwrap_or_else(|| format!("composer/installer:{}", arch.name()));
    to_docker_archive(
        &done.staging.layout,
        &done.manifest,
        &output,
        &repo_tag,
        epoch,
    )
    .map_err(|e| {
        CliError::User(anyhow::Error::new(e).context(format!("writing {}", output.display())))
    })?;
    println!(
        "installer\t{}\t{}\t{}",
        output.display(),
        repo_tag,
        done.manifest.digest()
    );
    if let Some((p, _, false)) = &push {
        eprintln!(
            "image-installer: {p} already there ({})",
            done.manifest.digest()
        );
        println!("installer\tpresent\t{p}\t{}", done.manifest.digest());
    }
    if let Some((p, reference, true)) = push {
        push_installer(args, &done, p, reference)?;
    }
    eprintln!(
        "image-installer: {} layer(s), initramfs {} bytes, in {:.1}s",
        done.layers.len(),
        done.initramfs_bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
