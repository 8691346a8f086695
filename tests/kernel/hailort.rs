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
//! pkgs/vars.yaml). The driver itself is the real one.

use super::common;
use super::common::demo::{copy_project, firmware_standin, release, shared_sources};

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
