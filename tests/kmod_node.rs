//! `composer kmod install --load` on a node that runs Debian's cloud kernel
//! under QEMU (TCG), with only busybox beside composer (`kmod_load/guest.rs`):
//! two KMM images, one per Debian release (the fixture modules built with
//! each release's headers: hello_user uses a symbol hello_pcie exports),
//! as `/images/kmod-<release>.tar`.
//!
//! - `install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' --load`
//!   picks the running release's archive, installs into composer's own
//!   directory (the guest has no `/lib/modules/<release>`), indexes it
//!   with busybox's depmod and loads hello_pcie, then hello_user;
//! - `status` shows both loaded; `unload --image` takes hello_user first;
//! - the other release's image is refused, naming the release it has;
//! - with the archive gone, the same install works from the cache, says
//!   so, and loads again;
//! - after `remove`, the modules stay loaded (said) and `unload` still
//!   unloads them, the kernel's own list being enough (and still refusing
//!   a holder outside the request).

mod common;

use std::path::Path;

use common::debian;
use common::guest::{boot, expect, ours, step};

const SCENARIO: &str = "\
step install composer kmod install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' --load
step status composer kmod status
step unload composer kmod unload --image kmod
step other composer kmod install oci-archive:/images/kmod-OLD.tar
step gone rm /images/kmod-NEW.tar
step cached composer kmod install 'oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar' --load
step remove composer kmod remove kmod
step held-after-remove composer kmod unload hello_pcie
step after-remove composer kmod unload hello_user hello_pcie
step status-after composer kmod status
";

/// `/images/kmod-<release>.tar` under `root`: a KMM image of the fixture
/// modules built for `release`.
fn kmm_image(root: &Path, release: &str) {
    let fx = debian::build_fixture(release);
    let tree = root
        .with_extension(format!("{release}.d"))
        .join(format!("opt/lib/modules/{release}/extra"));
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::copy(&fx.pcie, tree.join("hello_pcie.ko")).unwrap();
    std::fs::copy(&fx.user, tree.join("hello_user.ko")).unwrap();
    std::fs::create_dir_all(root.join("images")).unwrap();
    let dest = format!(
        "oci-archive:{}",
        root.join(format!("images/kmod-{release}.tar")).display()
    );
    let top = root.with_extension(format!("{release}.d"));
    let o = common::composer(root, &["pack", top.to_str().unwrap(), "-o", &dest]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(top).unwrap();
}

#[test]
fn install_load_on_debians_kernel_picks_the_running_release_and_works_from_the_cache() {
    let (new, old) = (debian::new(), debian::old());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    kmm_image(&root, new);
    kmm_image(&root, old);
    let scenario = SCENARIO.replace("NEW", new).replace("OLD", old);
    let steps = boot(&root, &debian::vmlinuz(new), "", &scenario);

    let own = format!("/var/lib/composer/modules/lib/modules/{new}/updates/composer/kmod");
    expect(
        &steps,
        "install",
        0,
        &[
            &format!("kmod: oci-archive:/images/kmod-{new}.tar is sha256:"),
            "taints it when loaded",
            "kmod\tinstalled\tsha256:",
            &format!("loaded hello_pcie ({own}/extra/hello_pcie.ko)"),
            &format!("loaded hello_user ({own}/extra/hello_user.ko)"),
        ],
    );
    let install = step(&steps, "install");
    let pcie = install
        .out
        .iter()
        .position(|l| l.starts_with("loaded hello_pcie"));
    let user = install
        .out
        .iter()
        .position(|l| l.starts_with("loaded hello_user"));
    assert!(pcie < user, "{install:#?}");
    assert_eq!(ours(install), ["hello_pcie", "hello_user"]);

    expect(
        &steps,
        "status",
        0,
        &[
            &format!("kernel {new}: module signatures not enforced (sig_enforce=N)"),
            "loaded (taint OE), used by hello_user",
        ],
    );
    let unload = step(&steps, "unload");
    assert_eq!(unload.rc, Some(0), "{unload:#?}");
    assert_eq!(unload.out, ["unloaded hello_user", "unloaded hello_pcie"]);
    assert!(ours(unload).is_empty());

    expect(
        &steps,
        "other",
        1,
        &[&format!(
            "has no modules for kernel {new}; it has modules for: {old}"
        )],
    );
    expect(&steps, "gone", 0, &[]);
    expect(
        &steps,
        "cached",
        0,
        &[
            "using the cached copy sha256:",
            "is installed already",
            "loaded hello_pcie",
            "loaded hello_user",
        ],
    );
    assert_eq!(ours(step(&steps, "cached")), ["hello_pcie", "hello_user"]);

    expect(
        &steps,
        "remove",
        0,
        &["hello_pcie, hello_user stay(s) loaded"],
    );
    expect(
        &steps,
        "held-after-remove",
        1,
        &[
            "hello_pcie is in use by hello_user, not among the modules to unload (hello_pcie); unload it first",
        ],
    );
    let after = step(&steps, "after-remove");
    assert_eq!(after.rc, Some(0), "{after:#?}");
    assert_eq!(after.out, ["unloaded hello_user", "unloaded hello_pcie"]);
    assert!(ours(after).is_empty());
    expect(&steps, "status-after", 0, &["no images installed"]);
}
