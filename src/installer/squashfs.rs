//! Squashfs images, made and read with Debian's squashfs-tools
//! (`mksquashfs`, `unsquashfs`), the tools Talos' imager runs.
//!
//! Why not a crate: `backhand` writes valid zstd images of the same size,
//! but compresses on one thread; on the 2-core reference machine it took
//! as long as mksquashfs only while mksquashfs had one free core, and
//! mksquashfs spreads compression over every core. Measured in
//! `bench/installer.sh`.
//!
//! Invariants:
//! - Images are reproducible: every file owned by root (`-all-root`), the
//!   filesystem and file times set to the epoch given, no appending to an
//!   existing file (`-noappend`); `SOURCE_DATE_EPOCH` is removed from the
//!   tools' environment because mksquashfs refuses it together with the
//!   explicit time options.
//! - Compression is zstd level 18, as Talos'.

use std::path::Path;
use std::process::Command;

use super::InstallerError;

fn run(cmd: &mut Command, tool: &'static str) -> Result<(), InstallerError> {
    cmd.env_remove("SOURCE_DATE_EPOCH");
    let out = cmd.output().map_err(|e| InstallerError::Tool {
        tool,
        message: if e.kind() == std::io::ErrorKind::NotFound {
            format!("not found ({e}); apt-get install squashfs-tools")
        } else {
            e.to_string()
        },
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(InstallerError::Tool {
            tool,
            message: format!(
                "{}: {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        });
    }
    Ok(())
}

/// Makes `image` (replaced if it exists) from the tree `src`.
pub fn create(src: &Path, image: &Path, epoch: u64) -> Result<(), InstallerError> {
    let time = epoch.min(u64::from(u32::MAX)).to_string();
    run(
        Command::new("mksquashfs")
            .arg(src)
            .arg(image)
            .args(["-all-root", "-noappend", "-no-progress", "-quiet"])
            .args(["-comp", "zstd", "-Xcompression-level", "18"])
            .args(["-mkfs-time", &time, "-all-time", &time]),
        "mksquashfs",
    )
}

/// Extracts `subdir` (a path inside the image, e.g. `usr/lib/modules`) of
/// `image` into `dest` (which must not exist). Extracting a path the
/// image does not hold leaves `dest` empty.
pub fn extract(image: &Path, subdir: &str, dest: &Path) -> Result<(), InstallerError> {
    run(
        Command::new("unsquashfs")
            .args(["-no-progress", "-quiet", "-d"])
            .arg(dest)
            .arg(image)
            .arg(subdir),
        "unsquashfs",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_reproducible_and_extracts_back() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("usr/lib/modules/6.1.0/extra")).unwrap();
        std::fs::write(src.join("usr/lib/modules/6.1.0/extra/a.ko"), b"ko").unwrap();
        std::fs::write(src.join("other"), b"x").unwrap();
        create(&src, &d.path().join("1.sqsh"), 1).unwrap();
        create(&src, &d.path().join("2.sqsh"), 1).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("1.sqsh")).unwrap(),
            std::fs::read(d.path().join("2.sqsh")).unwrap()
        );
        let out = d.path().join("out");
        extract(&d.path().join("1.sqsh"), "usr/lib/modules", &out).unwrap();
        assert_eq!(
            std::fs::read(out.join("usr/lib/modules/6.1.0/extra/a.ko")).unwrap(),
            b"ko"
        );
        assert!(!out.join("other").exists());
    }

    #[test]
    fn a_damaged_image_is_an_error_naming_the_tool() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("bad.sqsh"), b"not squashfs").unwrap();
        let e = extract(&d.path().join("bad.sqsh"), "usr", &d.path().join("o"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unsquashfs"), "{e}");
    }
}
