//! The boot proof of `tests/kmm.rs`: Debian's own kernel (`vmlinuz` from
//! its linux-image package) under QEMU (TCG) with a busybox initramfs,
//! through `scripts/kmod-boot-check.sh`:
//! - each release loads its own image's modules in dependency order
//!   (hello_pcie before hello_user, following depmod's index), and the
//!   kernel is tainted O (an out-of-tree module);
//! - under `module.sig_enforce=1` the same modules are refused: that kernel
//!   trusts only Debian's key ("Key was rejected by service");
//! - the check fails when asked to prove what did not happen (a module
//!   expected loaded under sig_enforce), and refuses an image of the other
//!   release before loading anything.

use std::path::Path;
use std::process::{Command, Output};

use super::common::debian;
use super::said;

fn check(project: &Path, kernel_release: &str, image_release: &str, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kmod-boot-check.sh");
    let tree = project.join(format!("bundle-{image_release}/rootfs"));
    Command::new(script)
        .arg("--kernel-deb")
        .arg(debian::image_deb(kernel_release))
        .arg("--kmm")
        .arg(&tree)
        // TCG on two busy cores: a boot takes seconds, but give it room.
        .args(["--timeout", "300"])
        .args(args)
        .output()
        .unwrap()
}

pub fn each_release_loads_its_own_image(project: &Path, releases: &[String]) {
    let both = [
        "--expect-loaded",
        "hello_pcie",
        "--expect-loaded",
        "hello_user",
    ];
    for release in releases {
        let o = check(project, release, release, &both);
        let text = said(&o);
        assert!(o.status.success(), "{release}: {text}");
        assert!(
            text.contains("KMOD-CHECK: order hello_pcie hello_user"),
            "loaded in dependency order: {text}"
        );
        let taint = text
            .lines()
            .find(|l| l.contains("KMOD-CHECK: taint "))
            .unwrap_or_else(|| panic!("no taint line: {text}"));
        assert!(taint.split_whitespace().any(|w| w == "O"), "{taint}");
    }

    let newest = &releases[0];
    let refused = [
        "--sig-enforce",
        "--expect-refused",
        "hello_pcie",
        "--expect-refused",
        "hello_user",
    ];
    let o = check(project, newest, newest, &refused);
    let text = said(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("Key was rejected by service"), "{text}");

    // The proof can fail: asked to load under sig_enforce, it says no.
    let o = check(
        project,
        newest,
        newest,
        &["--sig-enforce", "--expect-loaded", "hello_user"],
    );
    let text = said(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("hello_user was expected loaded but is NOT loaded"),
        "{text}"
    );

    // The other release's image on this kernel: nothing is loaded.
    let o = check(project, newest, &releases[1], &both);
    let text = said(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("release mismatch"), "{text}");
}
