//! System extensions on their way into the initramfs: what each one is
//! (its manifest), what leaves its squashfs for the initramfs itself
//! (firmware, early CPU microcode, as Talos' imager moves them), and the
//! `extensions.yaml` that lists the layers for the init.
//!
//! Invariants:
//! - Layers are listed in the order given, numbered `0.sqsh`, `1.sqsh`, …
//!   by their position (numeric, so `10.sqsh` follows `9.sqsh`); the
//!   module dependency layer, when there is one, is last (on top).
//! - `metadata` in `extensions.yaml` is the extension manifest's
//!   `metadata` mapping, re-emitted as parsed (values not rewritten).

use std::fs;
use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, Yaml, YamlEmitter};

use super::InstallerError;
use crate::output::extension::{ManifestInfo, is_extension, metadata_info};

/// An extension image unpacked to `root` (`manifest.yaml` + `rootfs/`).
pub struct Extension {
    /// The reference it came from, as given.
    pub reference: String,
    pub root: PathBuf,
    pub info: ManifestInfo,
    /// `metadata` of its manifest as YAML (no document marker).
    pub metadata: String,
}

fn input(reference: &str, message: impl Into<String>) -> InstallerError {
    InstallerError::Extension {
        reference: reference.to_string(),
        message: message.into(),
    }
}

/// Reads the manifest of an unpacked extension image.
pub fn load(reference: &str, root: &Path) -> Result<Extension, InstallerError> {
    if !is_extension(root) {
        return Err(input(
            reference,
            "not a system extension image: its root must hold manifest.yaml and rootfs/",
        ));
    }
    let text = fs::read_to_string(root.join("manifest.yaml"))
        .map_err(|e| input(reference, format!("manifest.yaml: {e}")))?;
    let docs =
        Yaml::load_from_str(&text).map_err(|e| input(reference, format!("manifest.yaml: {e}")))?;
    let node = docs
        .first()
        .and_then(|d| d.as_mapping_get("metadata"))
        .ok_or_else(|| input(reference, "manifest.yaml has no metadata"))?;
    let metadata = emit(node).map_err(|e| input(reference, e))?;
    let info = metadata_info(Some(node));
    Ok(Extension {
        reference: reference.to_string(),
        root: root.to_path_buf(),
        info,
        metadata,
    })
}

fn emit(node: &Yaml<'_>) -> Result<String, String> {
    let mut out = String::new();
    YamlEmitter::new(&mut out)
        .dump(node)
        .map_err(|e| format!("manifest.yaml metadata: {e}"))?;
    Ok(out
        .strip_prefix("---\n")
        .or_else(|| out.strip_prefix("---"))
        .unwrap_or(&out)
        .to_string())
}

/// The metadata of the module dependency layer.
pub fn dependency_metadata(release: &str) -> String {
    format!(
        "name: modules.dep\nversion: {release}\nauthor: composer\n\
         description: kernel module dependencies of the system extensions\n"
    )
}

/// `extensions.yaml`: `layers: [{image, metadata}]`, in the order given.
pub fn extensions_yaml(layers: &[(String, String)]) -> String {
    let mut out = String::from("layers:\n");
    for (image, metadata) in layers {
        out.push_str(&format!("  - image: {image}\n    metadata:\n"));
        for line in metadata.lines() {
            if line.trim().is_empty() {
                out.push('\n');
            } else {
                out.push_str("      ");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Early CPU microcode, as the kernel looks for it at the start of the
/// initramfs: (firmware directory, file-name prefix, destination).
const UCODE: &[(&str, &str, &str)] = &[
    ("intel-ucode", "", "kernel/x86/microcode/GenuineIntel.bin"),
    (
        "amd-ucode",
        "microcode_amd",
        "kernel/x86/microcode/AuthenticAMD.bin",
    ),
];

/// Moves what belongs in the initramfs out of the extension's rootfs:
/// CPU microcode is concatenated into `early` (an uncompressed archive
/// tree, amd64 only), then the whole `usr/lib/firmware` goes to the same
/// path under `initramfs` (the kernel loads firmware before the
/// extensions are mounted). Returns whether microcode was found.
pub fn move_to_initramfs(
    ext: &Extension,
    initramfs: &Path,
    early: &Path,
    x86: bool,
) -> Result<bool, InstallerError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| InstallerError::Io {
            path: path.clone(),
            source,
        }
    };
    let firmware = ext.root.join("rootfs/usr/lib/firmware");
    if !firmware.is_dir() {
        return Ok(false);
    }
    let mut ucode = false;
    if x86 {
        for (dir, prefix, dest) in UCODE {
            let mut blobs: Vec<PathBuf> = fs::read_dir(firmware.join(dir))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(prefix))
                })
                .collect();
            blobs.sort();
            if blobs.is_empty() {
                continue;
            }
            let to = early.join(dest);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            let mut bytes = fs::read(&to).unwrap_or_default();
            for b in &blobs {
                bytes.extend(fs::read(b).map_err(io(b))?);
            }
            fs::write(&to, bytes).map_err(io(&to))?;
            ucode = true;
        }
    }
    let to = initramfs.join("usr/lib/firmware");
    copy_tree(&firmware, &to)?;
    fs::remove_dir_all(&firmware).map_err(io(&firmware))?;
    Ok(ucode)
}

/// Copies a tree of directories, files and symlinks (merging into `to`).
fn copy_tree(from: &Path, to: &Path) -> Result<(), InstallerError> {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.map_err(|e| InstallerError::Io {
            path: from.to_path_buf(),
            source: e.into(),
        })?;
        let rel = entry.path().strip_prefix(from).unwrap_or(entry.path());
        let dest = to.join(rel);
        let io = |source| InstallerError::Io {
            path: dest.clone(),
            source,
        };
        let ft = entry.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&dest).map_err(io)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path()).map_err(io)?;
            let _ = fs::remove_file(&dest);
            std::os::unix::fs::symlink(target, &dest).map_err(io)?;
        } else if ft.is_file() {
            fs::copy(entry.path(), &dest).map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(d: &Path) -> Extension {
        fs::create_dir_all(d.join("rootfs/usr/lib/firmware/intel-ucode")).unwrap();
        fs::create_dir_all(d.join("rootfs/usr/lib/firmware/vendor")).unwrap();
        fs::write(d.join("rootfs/usr/lib/firmware/intel-ucode/06-01"), b"A").unwrap();
        fs::write(d.join("rootfs/usr/lib/firmware/intel-ucode/06-02"), b"B").unwrap();
        fs::write(d.join("rootfs/usr/lib/firmware/vendor/fw.bin"), b"fw").unwrap();
        fs::write(
            d.join("manifest.yaml"),
            "version: v1alpha1\nmetadata:\n  name: demo\n  version: 1.0.0\n  author: me\n  description: |\n    two\n    lines\n  compatibility:\n    talos:\n      version: \">= v1.9.0\"\n",
        )
        .unwrap();
        load("oci:x", d).unwrap()
    }

    #[test]
    fn extensions_yaml_lists_layers_with_their_metadata() {
        let d = tempfile::tempdir().unwrap();
        let e = ext(d.path());
        assert_eq!(e.info.name, "demo");
        let y = extensions_yaml(&[
            ("0.sqsh".into(), e.metadata.clone()),
            ("1.sqsh".into(), dependency_metadata("6.1.0")),
        ]);
        let docs = Yaml::load_from_str(&y).unwrap();
        let layers = docs[0].as_mapping_get("layers").unwrap().as_vec().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(
            layers[0].as_mapping_get("image").unwrap().as_str(),
            Some("0.sqsh")
        );
        let m = layers[0].as_mapping_get("metadata").unwrap();
        assert_eq!(m.as_mapping_get("name").unwrap().as_str(), Some("demo"));
        assert_eq!(
            m.as_mapping_get("description").unwrap().as_str(),
            Some("two\nlines\n")
        );
        let talos = m
            .as_mapping_get("compatibility")
            .and_then(|c| c.as_mapping_get("talos"))
            .and_then(|t| t.as_mapping_get("version"))
            .and_then(|v| v.as_str());
        assert_eq!(talos, Some(">= v1.9.0"));
        let dep = layers[1].as_mapping_get("metadata").unwrap();
        assert_eq!(
            dep.as_mapping_get("version").unwrap().as_str(),
            Some("6.1.0")
        );
    }

    #[test]
    fn firmware_and_microcode_move_to_the_initramfs() {
        let d = tempfile::tempdir().unwrap();
        let e = ext(&d.path().join("ext"));
        let (i, early) = (d.path().join("i"), d.path().join("early"));
        assert!(move_to_initramfs(&e, &i, &early, true).unwrap());
        assert_eq!(
            fs::read(early.join("kernel/x86/microcode/GenuineIntel.bin")).unwrap(),
            b"AB"
        );
        assert_eq!(
            fs::read(i.join("usr/lib/firmware/vendor/fw.bin")).unwrap(),
            b"fw"
        );
        assert!(!e.root.join("rootfs/usr/lib/firmware").exists());
    }

    #[test]
    fn a_tree_without_a_manifest_is_not_an_extension() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("usr")).unwrap();
        let e = load("oci:y", d.path()).err().unwrap().to_string();
        assert!(e.contains("oci:y") && e.contains("manifest.yaml"), "{e}");
    }
}
