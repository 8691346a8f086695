//! The bundled demo tree builds a real kernel and the fixture module with
//! `composer build`: Debian's linux-source-6.1, the host's toolchain, in
//! sandboxes, one signing session. The kernel then boots under QEMU (TCG)
//! with `module.sig_enforce=1` and proves the session-signed module loads
//! while unsigned, foreign-key and tampered copies are refused. Needs what
//! `make setup` installs. The cache lives in target/ so later runs are
//! warm; the first run compiles the kernel (minutes). The demo chain is one
//! test function:
//! the steps share one expensive build, and the installer built from it
//! boots too (tests/kernel/installer.rs), and its KMM image installs and
//! loads on a node booted from it (tests/kernel/node.rs), and its stages travel
//! through a registry cache to a second machine that builds nothing and boots
//! the same installer (tests/kernel/shared.rs). A second test takes the real
//! HailoRT driver through the same chain (tests/kernel/hailort.rs).

mod common;
#[path = "kernel/hailort.rs"]
mod hailort;
#[path = "kernel/installer.rs"]
mod installer;
#[path = "kernel/node.rs"]
mod node;
#[path = "kernel/shared.rs"]
mod shared;

use common::demo::{copy_project, digest_args, modinfo, release};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/composer-test-cache")
}

fn build(project: &Path, extra: &[&str]) -> (Output, String) {
    let mut args: Vec<String> = vec![
        "build".into(),
        "--cache-dir".into(),
        cache_dir().to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(digest_args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::composer(project, &refs);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed:\n{e}");
    (out, e)
}

#[test]
fn demo_tree_builds_kernel_and_module_then_caches_and_rebuilds_only_the_session() {
    let p = copy_project();
    let (out, _) = build(
        p.path(),
        &["kernel", "hello-module", "hello", "installer-base"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(
            "kernel\t_out/kernel\nhello-module\t_out/hello-module\nhello\t_out/hello\ninstaller-base\t_out/installer-base\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("hello\timage\toci:_out/images/hello:1.0.0\tsha256:"),
        "{stdout}"
    );
    let o = p.path().join("_out");
    let rel = release(&o);
    assert!(rel.starts_with("6.1."), "{rel}");
    let vmlinuz = fs::metadata(o.join("kernel/boot/vmlinuz")).unwrap();
    assert!(vmlinuz.len() > 500_000, "a real bzImage");
    let kmods = o.join(format!("kernel/usr/lib/modules/{rel}"));
    assert!(kmods.join("modules.dep").is_file());
    let ko = o.join(format!(
        "hello-module/usr/lib/modules/{rel}/extra/hello_pcie.ko"
    ));
    assert!(
        modinfo(&ko, "vermagic").starts_with(&format!("{rel} ")),
        "module built against the kernel"
    );
    assert_eq!(modinfo(&ko, "name"), "hello_pcie");
    assert_eq!(
        fs::metadata(o.join("hello-module/usr/lib/firmware/hello/hello_fw.bin"))
            .unwrap()
            .len(),
        64
    );

    // Every module of the session is signed by the key the kernel trusts.
    let cert = o.join("kernel/boot/signing_key.x509");
    let v = common::composer(
        p.path(),
        &[
            "verify",
            "_out/kernel",
            "_out/hello-module",
            "--cert",
            cert.to_str().unwrap(),
        ],
    );
    let verdict = String::from_utf8_lossy(&v.stderr);
    assert!(
        v.status.success(),
        "{verdict}\n{}",
        String::from_utf8_lossy(&v.stdout)
    );
    assert!(verdict.contains("0 not"), "{verdict}");
    // The same with the certificate read out of the kernel image.
    let v = common::composer(
        p.path(),
        &[
            "verify",
            "_out/kernel",
            "_out/hello-module",
            "--kernel",
            "_out/kernel/boot/vmlinuz",
        ],
    );
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    // The kernel agrees: boot it and load each variant of the module.
    let console = boot_with_module_variants(&o.join("kernel/boot/vmlinuz"), &ko);
    common::demo::assert_module_variants(&console);
    common::demo::assert_builtin_keys(&console, &cert);

    assert!(
        stdout.contains("installer-base\timage\toci:_out/images/installer-base:6.1\tsha256:"),
        "{stdout}"
    );

    extension_and_kmod_images(p.path(), &rel);
    installer::installer_end_to_end(p.path(), &rel);
    node::node_end_to_end(p.path(), &rel);

    no_private_key_in_the_cache();
    let old_cert = fs::read(&cert).unwrap();
    // Past one machine: the chain through a registry cache.
    shared::two_machines(p.path(), &rel);
    // Nothing changed: everything is cached.
    let (_, e) = build(
        p.path(),
        &["-v", "kernel", "hello-module", "hello", "installer-base"],
    );
    assert!(e.contains("built 0 stage(s), 6 cached"), "{e}");

    // The module's source changes: it rebuilds, and with it its signing
    // session: the kernel stage writes the new certificate into the kernel
    // compiled once (kernel-build is reused, nothing of it recompiles).
    let c = p
        .path()
        .join("fixtures/hello-module/linux/pcie/hello_pcie.c");
    let mut text = fs::read_to_string(&c).unwrap();
    // A change never seen before, so the cache cannot hold it from an
    // earlier run of this test.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    text.push_str(&format!("\n/* touched {nanos} */\n"));
    fs::write(&c, text).unwrap();
    let (_, e) = build(
        p.path(),
        &["-v", "kernel", "hello-module", "hello", "installer-base"],
    );
    assert!(e.contains("kernel-prepare: cached"), "{e}");
    assert!(
        e.contains("file /pkg/src/linux/pcie/hello_pcie.c changed"),
        "the miss is explained: {e}"
    );
    assert!(e.contains("kernel-build: cached"), "{e}");
    assert!(e.contains("built 4 stage(s), 2 cached"), "{e}");
    assert_eq!(release(&o), rel);
    // The new kernel trusts the new session's certificate, and only it.
    let new_cert = fs::read(o.join("kernel/boot/signing_key.x509")).unwrap();
    assert_ne!(new_cert, old_cert, "a new session, a new certificate");
    let v = common::composer(
        p.path(),
        &[
            "verify",
            "_out/hello-module",
            "--kernel",
            "_out/kernel/boot/vmlinuz",
        ],
    );
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

/// The kernel was compiled with no key: its build tree (the kernel-build
/// entry this cache built last, in the cache with every other stage; `CONFIG_MODULE_SIG_KEY=""`) has no `signing_key.pem`
/// or `x509.genkey` anywhere and an empty `certs/signing_key.x509`; no file
/// of `certs/`, and none of any other stage's output, holds a PEM private
/// key or the DER start of a PKCS#8 EC or RSA private key (version 0, then
/// the algorithm). (The kernel's sources themselves ship a test key,
/// tools/testing/selftests/sgx/sign_key.pem, which is why the rest of the
/// source tree is not grepped.)
fn no_private_key_in_the_cache() {
    let stages = cache_dir().join("stages");
    // The tree this cache built last (the cache, kept across test runs, may
    // hold trees earlier versions of the definitions built).
    let last = cache_dir().join("last/linux-amd64/kernel-build.json");
    let fp: composer::exec::key::Fingerprint =
        serde_json::from_slice(&fs::read(&last).unwrap()).unwrap();
    let trees: Vec<PathBuf> = vec![stages.join(fp.key()).join("out/src")];
    assert!(
        trees[0].join("vmlinux").is_file(),
        "a kernel build tree in {}",
        trees[0].display()
    );
    for src in &trees {
        assert_eq!(
            fs::metadata(src.join("certs/signing_key.x509"))
                .unwrap()
                .len(),
            0,
            "{}: the kernel was compiled with no certificate",
            src.display()
        );
        let made: Vec<_> = walkdir::WalkDir::new(src)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| {
                ["signing_key.pem", "x509.genkey"].contains(&&*e.file_name().to_string_lossy())
            })
            .map(|e| e.into_path())
            .collect();
        assert!(made.is_empty(), "the kernel's build made a key: {made:?}");
    }
    for pattern in [
        "PRIVATE KEY-----",
        r"\x02\x01\x00\x30\x10\x06\x07\x2a\x86\x48\xce\x3d\x02\x01",
        r"\x02\x01\x00\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01",
    ] {
        let o = Command::new("grep")
            .env("LC_ALL", "C")
            .args(["-rlaP", "--exclude-dir=src", pattern])
            .arg(&stages)
            .args(trees.iter().map(|t| t.join("certs")))
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "{pattern} found in: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

/// The real HailoRT driver through build, verify, image-installer and a
/// boot (tests/kernel/hailort.rs).
#[test]
fn the_real_hailort_driver_builds_verifies_and_loads_at_boot() {
    hailort::hailort_chain();
}

/// The demo's extension image (built with the kernel) and a KMM image of
/// the module (all cached: the same session), read by umoci and skopeo,
/// checked by composer's rules against the kernel image, then pushed.
fn extension_and_kmod_images(project: &Path, rel: &str) {
    let out = project.join("_out");
    let hello = out.join("images/hello");
    let bundle = project.join("bundle-hello");
    let top = common::umoci_unpack(&format!("{}:1.0.0", hello.display()), &bundle);
    assert_eq!(top, ["manifest.yaml", "rootfs"]);
    let v = common::composer(
        project,
        &[
            "validate-rootfs",
            bundle.join("rootfs").to_str().unwrap(),
            "--kernel",
            "_out/kernel/boot/vmlinuz",
            "--package",
            "hello",
            "--strict",
        ],
    );
    assert!(
        v.status.success(),
        "the unpacked extension passes every rule against the kernel's own key: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    // The module as a KMM kmod image: the session is cached, nothing runs.
    let (o, e) = build(project, &["hello-module", "--format", "kmm"]);
    assert!(e.contains("built 0 stage(s)"), "{e}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!(
            "hello-module\timage\toci:_out/images/hello-module:{rel}"
        )),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let kmm = project.join("bundle-kmm");
    common::run(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!(
                "{}:{rel}",
                out.join("images/hello-module").display()
            ))
            .arg(&kmm),
    );
    let mods = kmm.join(format!("rootfs/opt/lib/modules/{rel}"));
    assert!(mods.join("extra/hello_pcie.ko").is_file());
    let dep = fs::read_to_string(mods.join("modules.dep")).unwrap();
    assert!(
        dep.contains("extra/hello_pcie.ko:"),
        "depmod's index: {dep}"
    );
    assert!(kmm.join("rootfs/firmware/hello/hello_fw.bin").is_file());

    // Push both to a real registry: the digests there are the local ones.
    let registry = common::registry::Registry::start();
    let prefix = format!("{}/composer", registry.addr());
    let (o, _) = build(
        project,
        &[
            "kernel",
            "hello-module",
            "hello",
            "--push",
            &prefix,
            "--insecure",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("hello\tpushed\t"));
    let remote = common::run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{prefix}/hello:1.0.0"),
    ]));
    let remote: serde_json::Value = serde_json::from_str(&remote).unwrap();
    assert_eq!(
        remote["Digest"],
        common::layout_digest(&hello, "1.0.0").as_str()
    );
}

/// Boots `vmlinuz` under QEMU with an initramfs holding busybox and four
/// copies of the module (unsigned, signed by another key, tampered, good);
/// returns the serial console.
fn boot_with_module_variants(vmlinuz: &Path, ko: &Path) -> String {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("initramfs");
    for dir in ["bin", "m", "proc", "tmp", "dev"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for (name, bytes) in common::demo::module_variants(ko) {
        fs::write(root.join(format!("m/{name}.ko")), bytes).unwrap();
    }
    let init = "#!/bin/busybox sh\n\
        /bin/busybox mount -t proc proc /proc\n\
        for m in unsigned foreign tampered good; do\n\
          if /bin/busybox insmod /m/$m.ko 2>/tmp/err; then echo \"RESULT $m loaded\";\n\
          else echo \"RESULT $m refused: $(/bin/busybox cat /tmp/err)\"; fi\n\
        done\n\
        /bin/busybox cat /proc/modules\n\
        /bin/busybox sed 's/^/KEYS /' /proc/keys\n\
        /bin/busybox poweroff -f\n";
    fs::write(root.join("init"), init).unwrap();
    common::sh(
        &root,
        "chmod 0755 init bin/busybox && mknod -m 0600 dev/console c 5 1 && \
         find . | /bin/busybox cpio -o -H newc > ../initramfs.cpio 2>/dev/null",
    );
    qemu_boot(vmlinuz, &d.path().join("initramfs.cpio"))
}

/// Boots `vmlinuz` with `initrd` under QEMU (TCG, `module.sig_enforce=1`,
/// bounded by a 300 s timeout); returns the serial console.
fn qemu_boot(vmlinuz: &Path, initrd: &Path) -> String {
    let out = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 module.sig_enforce=1 panic=-1"])
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qemu: {console}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    console
}
