//! The real HailoRT PCIe driver (hailo-ai/hailort-drivers 4.23.0, from
//! `../shared/sources`, byte-identical to the release archive) through the
//! whole chain, as a user runs it:
//! `composer build kernel hailort-pkg hailort installer-base --source-mirror
//! ../shared/sources`, then `composer verify`, `composer image-installer`,
//! and the installer booted under QEMU with `module.sig_enforce=1`, where
//! `hailo_pci` must be in `/proc/modules` (no Hailo device is needed for the
//! module to load).
//!
//! The Hailo-8 firmware is a proprietary download that cannot be had here:
//! this test stands in a generated blob for the firmware only, with its own
//! checksums (passed as `HAILORT_FIRMWARE_SHA256/512`, see
//! pkgs/hailort/vars.yaml). The driver itself is the real one.

use std::fs;
use std::path::{Path, PathBuf};

use super::common;
use super::common::demo::{copy_project, release};

/// `../shared/sources`: the mirror of upstream archives beside the project.
fn shared_sources() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/sources");
    assert!(
        dir.join("hailort-drivers-4.23.0.tar.gz").is_file(),
        "{} holds no hailort-drivers-4.23.0.tar.gz",
        dir.display()
    );
    dir
}

/// A mirror directory holding the firmware stand-in under its sha256, and
/// the build args that make the definitions expect it.
fn firmware_standin(dir: &Path) -> Vec<String> {
    use sha2::{Digest, Sha256, Sha512};
    let blob = b"composer test: a generated stand-in for hailo8_fw.4.23.0.bin. Not firmware.\n";
    let sha256 = hex::encode(Sha256::digest(blob));
    let sha512 = hex::encode(Sha512::digest(blob));
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(&sha256), blob).unwrap();
    vec![
        "--source-mirror".into(),
        dir.to_string_lossy().into_owned(),
        "--build-arg".into(),
        format!("HAILORT_FIRMWARE_SHA256={sha256}"),
        "--build-arg".into(),
        format!("HAILORT_FIRMWARE_SHA512={sha512}"),
    ]
}

pub fn hailort_chain() {
    let p = copy_project();
    let fw = firmware_standin(&p.path().join("firmware-mirror"));
    let mut extra: Vec<String> = ["kernel", "hailort-pkg", "hailort", "installer-base"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    extra.push("--source-mirror".into());
    extra.push(shared_sources().to_string_lossy().into_owned());
    extra.extend(fw);
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (out, _) = super::build(p.path(), &refs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hailort\timage\toci:_out/images/hailort:4.23.0\tsha256:"),
        "{stdout}"
    );

    let o = p.path().join("_out");
    let rel = release(&o);
    let ko = o.join(format!(
        "hailort-pkg/usr/lib/modules/{rel}/kernel/drivers/misc/hailo_pci.ko"
    ));
    assert!(ko.is_file(), "{} missing", ko.display());
    assert!(
        common::demo::modinfo(&ko, "vermagic").starts_with(&format!("{rel} ")),
        "built against the session's kernel"
    );
    assert!(
        o.join("hailort/rootfs/usr/lib/firmware/hailo/hailo8_fw.bin")
            .is_file()
    );

    let v = common::composer(
        p.path(),
        &[
            "verify",
            "_out/hailort-pkg",
            "--kernel",
            "_out/kernel/boot/vmlinuz",
        ],
    );
    let verdict = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(v.status.success(), "{verdict}");
    assert!(verdict.contains("hailo_pci.ko"), "{verdict}");

    let o = super::installer::image_installer(
        p.path(),
        &["oci:_out/images/hailort:4.23.0"],
        "_out/installer-amd64.tar",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let check = super::installer::boot_check(p.path(), "_out/installer-amd64.tar", &["hailo_pci"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("extension module(s) hailo_pci loaded under module.sig_enforce=1"),
        "{said}"
    );
}
