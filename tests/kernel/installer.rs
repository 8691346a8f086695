//! The installer end to end, on the demo tree's one build: `composer
//! image-installer` folds the hello extension into the installer-base
//! image; the result is unpacked with skopeo + umoci and its kernel and
//! initramfs boot under QEMU (TCG) with `module.sig_enforce=1`, where the
//! base's /init overlays the extension layers and modprobes the module.
//! Extensions whose module comes from another signing session, or for
//! another kernel release, are refused before anything is written; let
//! through with `--skip-rule`, the kernel refuses the module at boot and
//! `scripts/boot-check.sh` fails, naming it.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::common;

/// Runs `composer image-installer` in `project` with the test cache.
pub fn image_installer(project: &Path, extensions: &[&str], output: &str) -> std::process::Output {
    image_installer_with(project, extensions, output, &[])
}

/// The same with more options.
pub fn image_installer_with(
    project: &Path,
    extensions: &[&str],
    output: &str,
    extra: &[&str],
) -> std::process::Output {
    let cache = super::cache_dir();
    let mut args = vec![
        "image-installer",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--base-installer-image",
        "oci:_out/images/installer-base:6.1",
        "--output",
        output,
    ];
    for e in extensions {
        args.push("--system-extension-image");
        args.push(e);
    }
    args.extend_from_slice(extra);
    common::composer(project, &args)
}

/// `scripts/boot-check.sh TAR --expect M...`, run in `project`.
pub fn boot_check(project: &Path, tar: &str, expect: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/boot-check.sh");
    let mut cmd = Command::new(script);
    cmd.current_dir(project).arg(tar);
    for m in expect {
        cmd.args(["--expect", m]);
    }
    cmd.output().unwrap()
}

fn no_staging_left(dir: &Path) {
    let left: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".composer-staging-"))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

pub fn installer_end_to_end(project: &Path, rel: &str) {
    let out = project.join("_out");
    let o = image_installer(
        project,
        &["oci:_out/images/hello:1.0.0"],
        "_out/installer-amd64.tar",
    );
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "image-installer failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("NAME "), "{stdout}");
    let table: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(table[0], ["hello", "1.0.0", "composer"], "{stdout}");
    assert_eq!(table[1], ["modules.dep", rel, "composer"], "{stdout}");
    let digest = stdout
        .lines()
        .find(|l| l.starts_with("installer\t"))
        .and_then(|l| l.split('\t').nth(3))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();
    no_staging_left(&out);

    // Reproducible: the same inputs give the same archive, byte for byte.
    let again = image_installer(project, &["oci:_out/images/hello:1.0.0"], "_out/again.tar");
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains(&digest));
    assert_eq!(
        fs::read(out.join("installer-amd64.tar")).unwrap(),
        fs::read(out.join("again.tar")).unwrap()
    );

    // A real client reads it: skopeo copy + umoci unpack.
    let lay = project.join("installer-layout");
    common::run(
        Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(format!(
                "docker-archive:{}",
                out.join("installer-amd64.tar").display()
            ))
            .arg(format!("oci:{}:installer", lay.display())),
    );
    let bundle = project.join("installer-bundle");
    common::umoci_unpack(&format!("{}:installer", lay.display()), &bundle);
    let install = bundle.join("rootfs/usr/install/amd64");
    let vmlinuz = install.join("vmlinuz");
    let initrd = install.join("initramfs.xz");
    assert_eq!(
        fs::read(&vmlinuz).unwrap(),
        fs::read(out.join("kernel/boot/vmlinuz")).unwrap(),
        "the base's kernel, unchanged"
    );
    let base_initrd = fs::read(out.join("installer-base/usr/install/amd64/initramfs.xz")).unwrap();
    let new_initrd = fs::read(&initrd).unwrap();
    assert!(
        new_initrd.starts_with(&base_initrd),
        "appended after the base"
    );
    assert!(new_initrd.len() > base_initrd.len());

    // Boot it: the base's /init mounts and overlays the layers, then loads
    // the extension's module under sig_enforce.
    let console = super::qemu_boot(&vmlinuz, &initrd);
    for line in [
        "composer-init: layer 0.sqsh mounted",
        "composer-init: layer 1.sqsh mounted",
        "composer-init: extension hello",
        "composer-init: module hello_pcie loaded",
        "composer-init: module hello_user loaded",
        "composer-init: boot check passed",
    ] {
        assert!(console.contains(line), "missing `{line}`:\n{console}");
    }
    assert!(console.contains("sig_enforce=Y"), "{console}");
    let check = boot_check(
        project,
        "_out/installer-amd64.tar",
        &["hello_pcie", "hello_user"],
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains(
            "extension module(s) hello_pcie,hello_user loaded under module.sig_enforce=1"
        ),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // A module signed in another session (another ephemeral key) is
    // refused at image-installer time, and nothing is written.
    let foreign = foreign_extension(
        project,
        rel,
        "foreign",
        |ko| {
            use composer::sign::{Session, kmod};
            let content = kmod::unsigned_content(ko).unwrap().to_vec();
            Session::start().unwrap().sign_module(&content).unwrap()
        },
        rel,
    );
    let o = image_installer(project, &[&foreign], "_out/foreign.tar");
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("modules-signed") && e.contains("hello_pcie.ko"),
        "{e}"
    );
    assert!(e.contains("no installer image written"), "{e}");
    assert!(!out.join("foreign.tar").exists());
    no_staging_left(&out);

    // Let through on purpose, the same module reaches the kernel, which
    // refuses it: the boot check fails, naming the module and the reason.
    let o = image_installer_with(
        project,
        &[&foreign],
        "_out/foreign.tar",
        &["--skip-rule", "modules-signed"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let check = boot_check(project, "_out/foreign.tar", &[]);
    let e = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{e}");
    assert!(e.contains("boot check FAILED"), "{e}");
    assert!(
        e.contains("module hello_pcie NOT loaded")
            && e.contains("Key was rejected by service")
            && e.contains("Loading of module with unavailable key is rejected"),
        "the module, modprobe's error and the kernel's reason: {e}"
    );
    assert!(!String::from_utf8_lossy(&check.stdout).contains("boot check passed"));

    // Modules for another kernel release are refused too.
    let other = foreign_extension(
        project,
        rel,
        "other-release",
        |ko| ko.to_vec(),
        &format!("{rel}-other"),
    );
    let o = image_installer(
        project,
        &["oci:_out/images/hello:1.0.0", &other],
        "_out/other.tar",
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains(&format!("{rel}-other")), "{e}");
    assert!(!out.join("other.tar").exists());
    no_staging_left(&out);
}

/// The hello extension with its module replaced by `change(module)` and
/// moved to `release`'s directory, packed as `oci:<project>/NAME:1.0.0`.
fn foreign_extension(
    project: &Path,
    rel: &str,
    name: &str,
    change: impl Fn(&[u8]) -> Vec<u8>,
    release: &str,
) -> String {
    let tree = project.join(format!("ext-{name}"));
    common::sh(
        project,
        &format!("rm -rf {0} && cp -a _out/hello {0}", tree.display()),
    );
    let modules = tree.join("rootfs/usr/lib/modules");
    let ko = modules.join(rel).join("extra/hello_pcie.ko");
    let bytes = change(&fs::read(&ko).unwrap());
    fs::write(&ko, bytes).unwrap();
    if release != rel {
        fs::rename(modules.join(rel), modules.join(release)).unwrap();
    }
    let dest = format!("oci:{}:1.0.0", project.join(name).display());
    let o = common::composer(project, &["pack", tree.to_str().unwrap(), "-o", &dest]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    dest
}
