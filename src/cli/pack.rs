//! `composer pack`: packs root filesystem directories into an image (one
//! platform, or an index over several) and writes it to a destination —
//! the image writers of `composer build`, for trees made elsewhere.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{CliError, CliResult, Global};
use crate::defs::Platform;
use crate::oci::layer;
use crate::oci::reference::ImageRef;
use crate::output::publish::{Staging, write_local};
use crate::output::{Compression, ImageMeta, write_image, write_index};

#[derive(Args, Debug)]
pub struct PackArgs {
    /// The directory to pack (its contents become the image's root), for
    /// `--platform`. Use `--rootfs` instead for a multi-platform index.
    #[arg(
        value_name = "DIR",
        required_unless_present = "rootfs",
        conflicts_with = "rootfs"
    )]
    pub dir: Option<PathBuf>,
    /// PLATFORM=DIR, repeated: one image per platform under an index.
    #[arg(long, value_name = "PLATFORM=DIR")]
    pub rootfs: Vec<String>,
    /// The platform of DIR.
    #[arg(long, default_value = "linux/amd64", value_parser = super::parse_platform)]
    pub platform: Platform,
    /// Destination: oci:DIR[:TAG], oci-archive:FILE[:TAG] or
    /// docker-archive:FILE[:NAME:TAG].
    #[arg(long, short = 'o', value_name = "REF")]
    pub output: String,
    /// Layer compression: gzip, zstd or none.
    #[arg(long, default_value = "gzip")]
    pub compression: Compression,
    /// A label (KEY=VALUE), repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = super::parse_build_arg)]
    pub labels: Vec<(String, String)>,
    /// The tag when the destination names none.
    #[arg(long, default_value = "latest")]
    pub tag: String,
}

pub fn run(_global: &Global, args: &PackArgs) -> CliResult {
    let dest: ImageRef = args.output.parse().map_err(CliError::user)?;
    let epoch = super::build::source_date_epoch(&[])?.unwrap_or(0).max(0) as u64;
    let mut trees: Vec<(Platform, PathBuf)> = Vec::new();
    for r in &args.rootfs {
        let (p, d) = r
            .split_once('=')
            .ok_or_else(|| CliError::user(format!("--rootfs `{r}`: expected PLATFORM=DIR")))?;
        let p: Platform = p.parse().map_err(CliError::user)?;
        if trees.iter().any(|(q, _)| *q == p) {
            return Err(CliError::user(format!(
                "--rootfs: platform {p} given twice"
            )));
        }
        trees.push((p, PathBuf::from(d)));
    }
    if let Some(d) = &args.dir {
        trees.push((args.platform, d.clone()));
    }
    for (_, d) in &trees {
        match std::fs::metadata(d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(CliError::user(format!("{}: not a directory", d.display()))),
            Err(e) => return Err(CliError::user(format!("{}: {e}", d.display()))),
        }
    }
    if trees.len() > 1 && matches!(dest, ImageRef::DockerArchive { .. }) {
        return Err(CliError::user(
            "a docker-archive holds one platform's image; write several platforms as oci: or oci-archive:",
        ));
    }
    let meta = ImageMeta {
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        created: epoch,
    };
    let near = match &dest {
        ImageRef::Layout { dir, .. } => dir.parent().map(PathBuf::from),
        ImageRef::OciArchive { path, .. } | ImageRef::DockerArchive { path, .. } => {
            path.parent().map(PathBuf::from)
        }
        ImageRef::Registry(_) => None,
    }
    .filter(|p| !p.as_os_str().is_empty())
    .unwrap_or_else(|| PathBuf::from("."));
    let staging = Staging::new(&near).map_err(|e| CliError::User(e.into()))?;
    // The destination and the staging area may lie inside a packed tree.
    let exclude = [
        staging.path().to_path_buf(),
        match &dest {
            ImageRef::Layout { dir, .. } => dir.clone(),
            ImageRef::OciArchive { path, .. } | ImageRef::DockerArchive { path, .. } => {
                path.clone()
            }
            ImageRef::Registry(_) => PathBuf::new(),
        },
    ];
    let mut manifests = Vec::new();
    for (platform, dir) in &trees {
        let layer = layer::write_entries(
            &staging.layout,
            &[(String::new(), dir.clone())],
            &exclude,
            args.compression,
            epoch,
        )
        .map_err(|e| CliError::User(e.into()))?;
        eprintln!(
            "{platform}: {} entries, layer {} ({} bytes)",
            layer.entries,
            layer.descriptor.digest(),
            layer.descriptor.size()
        );
        manifests.push(
            write_image(&staging.layout, *platform, &[layer], &meta)
                .map_err(|e| CliError::User(e.into()))?,
        );
    }
    let top = if trees.len() == 1 {
        manifests.remove(0)
    } else {
        write_index(&staging.layout, &manifests, &meta).map_err(|e| CliError::User(e.into()))?
    };
    let name = match &dest {
        ImageRef::DockerArchive { path, .. } => path
            .file_stem()
            .map_or_else(|| "image".to_string(), |s| s.to_string_lossy().into_owned()),
        _ => "image".to_string(),
    };
    let published = write_local(&staging.layout, &top, &dest, &name, &args.tag, epoch)
        .map_err(|e| CliError::User(e.into()))?;
    println!("{}\t{}", published.destination, published.digest);
    Ok(ExitCode::SUCCESS)
}
