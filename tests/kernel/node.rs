//! The node side on the demo kernel: the KMM image of the session's two
//! modules (hello_user uses a symbol hello_pcie exports, both signed in the
//! kernel's own session) installed by `composer kmod` in a QEMU guest
//! booted with `module.sig_enforce=1`, whose initramfs holds only busybox,
//! composer with its libraries, the kernel image at `/boot/vmlinuz-<rel>`
//! (the default trust anchors) and oci-archives (`common/guest.rs`):
//!
//! - the image with hello_user changed after signing is refused before
//!   anything is loaded, and the guest's files are the same after;
//! - an image for another release is refused, naming the release it has;
//! - `install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' --load`
//!   loads hello_pcie, then hello_user, which the kernel accepts as signed
//!   (taint O, not E); `status` shows them; `unload hello_pcie` unloads
//!   hello_user first;
//! - with the archive gone, the same install works from the cache and
//!   says which digest.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::guest::{boot, expect, ours, step};
use crate::common::{self, run};

/// The release the image for another kernel has.
const OTHER: &str = "6.1.0-other";

const SCENARIO: &str = "\
snapshot() { find / -xdev ! -path '/tmp/*' | sort; }
snapshot >/tmp/before
step tampered composer kmod install oci-archive:/images/tampered.tar --load
step unchanged-tampered sh -c 'find / -xdev ! -path \"/tmp/*\" | sort | diff /tmp/before -'
step other composer kmod install oci-archive:/images/other.tar --load
step unchanged-other sh -c 'find / -xdev ! -path \"/tmp/*\" | sort | diff /tmp/before -'
step install composer kmod install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' --load
step status composer kmod status
step unload composer kmod unload hello_pcie
step gone rm /images/kmod-REL.tar
step cached composer kmod install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' --load
step status-cached composer kmod status
";

/// Boots the demo kernel of `project`'s `_out` with the session's KMM
/// image (`_out/images/hello-module:<rel>`) and two changed copies, and
/// checks what `composer kmod` did with each.
pub fn node_end_to_end(project: &Path, rel: &str) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    images(project, rel, &root, &d.path().join("kmm"));
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::copy(
        project.join("_out/kernel/boot/vmlinuz"),
        root.join(format!("boot/vmlinuz-{rel}")),
    )
    .unwrap();
    let steps = boot(
        &root,
        &project.join("_out/kernel/boot/vmlinuz"),
        "module.sig_enforce=1",
        &SCENARIO.replace("REL", rel),
    );
    refusals(&steps, rel);
    install_status_unload(&steps, rel);
    expect(&steps, "gone", 0, &[]);
    expect(
        &steps,
        "cached",
        0,
        &[
            "using the cached copy sha256:",
            "loaded hello_pcie",
            "loaded hello_user",
        ],
    );
    assert_eq!(ours(step(&steps, "cached")), ["hello_pcie", "hello_user"]);
    expect(&steps, "status-cached", 0, &["used by hello_user"]);
}

/// `/images/kmod-<rel>.tar` (the session's image as built), and from its
/// filesystem `/images/tampered.tar` (one byte of hello_user's content
/// flipped, the signature kept) and `/images/other.tar` (the same modules
/// under another release's directory).
fn images(project: &Path, rel: &str, root: &Path, work: &Path) {
    fs::create_dir_all(root.join("images")).unwrap();
    let layout = project.join("_out/images/hello-module");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:{rel}", layout.display()))
        .arg(format!(
            "oci-archive:{}",
            root.join(format!("images/kmod-{rel}.tar")).display()
        )));
    common::umoci_unpack(&format!("{}:{rel}", layout.display()), work);
    let rootfs = work.join("rootfs");
    let modules = rootfs.join("opt/lib/modules");
    let user = modules.join(rel).join("extra/hello_user.ko");
    let good = fs::read(&user).unwrap();
    let content = composer::sign::kmod::unsigned_content(&good).unwrap().len();
    let mut tampered = good.clone();
    tampered[content / 2] ^= 0x01;
    fs::write(&user, &tampered).unwrap();
    pack(project, &rootfs, &root.join("images/tampered.tar"));
    fs::write(&user, &good).unwrap();
    fs::rename(modules.join(rel), modules.join(OTHER)).unwrap();
    pack(project, &rootfs, &root.join("images/other.tar"));
}

fn pack(project: &Path, tree: &Path, archive: &Path) {
    let o = common::composer(
        project,
        &[
            "pack",
            tree.to_str().unwrap(),
            "-o",
            &format!("oci-archive:{}", archive.display()),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The tampered image and the other release's: refused, nothing loaded,
/// no file of the guest changed.
fn refusals(steps: &common::guest::Steps, rel: &str) {
    expect(
        steps,
        "tampered",
        1,
        &[
            "extra/hello_user.ko: signature does not verify: the module was changed after signing",
            "the kernel enforces module signatures (sig_enforce=Y) and refuses it",
        ],
    );
    assert!(ours(step(steps, "tampered")).is_empty());
    expect(steps, "unchanged-tampered", 0, &[]);
    assert!(step(steps, "unchanged-tampered").out.is_empty());
    expect(
        steps,
        "other",
        1,
        &[&format!(
            "has no modules for kernel {rel}; it has modules for: {OTHER}"
        )],
    );
    assert!(ours(step(steps, "other")).is_empty());
    expect(steps, "unchanged-other", 0, &[]);
    assert!(step(steps, "unchanged-other").out.is_empty());
}

/// The session's image: both modules loaded in order under enforcement,
/// shown, and unloaded dependant first.
fn install_status_unload(steps: &common::guest::Steps, rel: &str) {
    let own = format!("/var/lib/composer/modules/lib/modules/{rel}/updates/composer/kmod");
    expect(
        steps,
        "install",
        0,
        &[
            &format!("kmod: oci-archive:/images/kmod-{rel}.tar is sha256:"),
            &format!("loaded hello_pcie ({own}/extra/hello_pcie.ko)"),
            &format!("loaded hello_user ({own}/extra/hello_user.ko)"),
        ],
    );
    let install = step(steps, "install");
    assert!(
        !install.text().contains("taints"),
        "signed in the kernel's session: {install:#?}"
    );
    let at = |m: &str| {
        install
            .out
            .iter()
            .position(|l| l.starts_with(&format!("loaded {m} ")))
    };
    assert!(at("hello_pcie") < at("hello_user"), "{install:#?}");
    assert_eq!(ours(install), ["hello_pcie", "hello_user"]);

    expect(
        steps,
        "status",
        0,
        &[
            &format!("kernel {rel}: module signatures enforced (sig_enforce=Y)"),
            "loaded (taint O), used by hello_user",
        ],
    );
    let unload = step(steps, "unload");
    assert_eq!(unload.rc, Some(0), "{unload:#?}");
    assert_eq!(unload.out, ["unloaded hello_user", "unloaded hello_pcie"]);
    assert!(ours(unload).is_empty());
}
