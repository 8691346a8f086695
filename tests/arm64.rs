//! The bundled demo tree cross-compiles for arm64 on an x86_64 machine:
//! `composer build --platform linux/arm64 kernel hello-module` builds
//! Debian's linux-source-6.1 and the fixture module with Debian's
//! `gcc-aarch64-linux-gnu` (through ccache), in one signing session. The
//! outputs are an arm64 `Image` and an aarch64 module signed by the key that
//! image trusts; `composer verify --kernel` agrees and refuses another key.
//! The kernel then boots under `qemu-system-aarch64` (`-M virt`, TCG) with
//! `module.sig_enforce=1` and a static aarch64 `/init` compiled here, which
//! loads the session-signed module and sees the unsigned, foreign-key and
//! tampered copies refused.
//!
//! Needs what `make setup` installs. The cache lives in
//! target/composer-test-cache-arm64 (its own, so it never waits for the
//! amd64 kernel test's lock) and is reused by later runs: the first run
//! compiles the kernel: about 12–15 minutes on 2 cores shared with other
//! work (measured: 14 min, 10 of them in kernel-build); a warm run takes
//! about a minute (the boot itself ~1.5 s). One test function: the steps
//! share one expensive build.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::demo;

const EM_AARCH64: u16 = 183;

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/composer-test-cache-arm64")
}

fn build(project: &Path, extra: &[&str]) -> (Output, String) {
    let mut args: Vec<String> = vec![
        "build".into(),
        "--platform".into(),
        "linux/arm64".into(),
        "--cache-dir".into(),
        cache_dir().to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(demo::digest_args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::composer(project, &refs);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed:\n{e}");
    (out, e)
}

fn verify(project: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let v = common::composer(project, &all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    (v.status.success(), text)
}

#[test]
fn demo_tree_cross_compiles_for_arm64_and_its_module_verifies_and_loads() {
    assert!(
        Path::new("/usr/bin/aarch64-linux-gnu-gcc").exists(),
        "no aarch64 cross compiler (run `make setup`)"
    );
    let p = demo::copy_project();
    let (out, _) = build(p.path(), &["kernel", "hello-module"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("kernel\t_out/kernel\nhello-module\t_out/hello-module\n"),
        "{stdout}"
    );
    let o = p.path().join("_out");
    let rel = demo::release(&o);
    assert!(rel.starts_with("6.1."), "{rel}");

    // An arm64 Image: uncompressed, "ARM\x64" at 0x38 of its header.
    let image = fs::read(o.join("kernel/boot/vmlinuz")).unwrap();
    assert!(
        image.len() > 1_000_000,
        "a real Image: {} bytes",
        image.len()
    );
    assert_eq!(&image[0x38..0x3c], b"ARM\x64", "arm64 Image magic");
    assert!(
        o.join(format!("kernel/usr/lib/modules/{rel}/modules.dep"))
            .is_file()
    );

    // An aarch64 ELF (64-bit, little-endian), signed, for this kernel.
    let ko = o.join(format!(
        "hello-module/usr/lib/modules/{rel}/extra/hello_pcie.ko"
    ));
    let module = fs::read(&ko).unwrap();
    assert_eq!(&module[..6], b"\x7fELF\x02\x01", "ELF64, little-endian");
    assert_eq!(u16::from_le_bytes([module[18], module[19]]), EM_AARCH64);
    assert!(module.ends_with(b"~Module signature appended~\n"));
    let vermagic = demo::modinfo(&ko, "vermagic");
    assert!(vermagic.starts_with(&format!("{rel} ")), "{vermagic}");
    assert!(vermagic.ends_with(" aarch64"), "{vermagic}");
    // When kernel-build ran in this build (not cached), its log says how.
    if let Ok(log) = fs::read_to_string(o.join("logs/kernel-build/1-prepare.log")) {
        assert!(
            log.contains("kernel-build: cross-compiling for aarch64 with aarch64-linux-gnu-gcc"),
            "{log}"
        );
    }

    // The certificate read out of the Image trusts the module.
    let (ok, text) = verify(
        p.path(),
        &[
            "_out/kernel",
            "_out/hello-module",
            "--kernel",
            "_out/kernel/boot/vmlinuz",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("0 not"), "{text}");
    // A certificate of another key does not.
    common::sh(
        p.path(),
        "openssl req -new -nodes -x509 -batch -subj /CN=other -days 1 \
         -newkey ec -pkeyopt ec_paramgen_curve:P-384 -keyout other.key -out other.pem 2>/dev/null",
    );
    let (ok, text) = verify(p.path(), &["_out/hello-module", "--cert", "other.pem"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("hello_pcie.ko") && text.contains("hello_user.ko") && text.contains("2 not"),
        "{text}"
    );

    // The kernel agrees: boot it and load each variant of the module.
    let console = boot_with_module_variants(&o.join("kernel/boot/vmlinuz"), &ko);
    common::demo::assert_module_variants(&console);
    common::demo::assert_builtin_keys(&console, &o.join("kernel/boot/signing_key.x509"));

    // Nothing changed: everything is cached.
    let (_, e) = build(p.path(), &["-v", "kernel", "hello-module"]);
    assert!(e.contains("built 0 stage(s), 4 cached"), "{e}");
}

/// The test's `/init`: loads four copies of the module with finit_module,
/// prints one `RESULT` line each, /proc/modules and /proc/keys (each line
/// as `KEYS <line>`), then powers off.
const INIT_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    const char *names[] = {"unsigned", "foreign", "tampered", "good"};
    char path[64], line[256];
    mount("proc", "/proc", "proc", 0, NULL);
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "/m/%s.ko", names[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0 && syscall(SYS_finit_module, fd, "", 0) == 0)
            printf("RESULT %s loaded\n", names[i]);
        else
            printf("RESULT %s refused: %s\n", names[i], strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    FILE *f = fopen("/proc/modules", "r");
    while (f && fgets(line, sizeof line, f))
        fputs(line, stdout);
    f = fopen("/proc/keys", "r");
    while (f && fgets(line, sizeof line, f))
        printf("KEYS %s", line);
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    return 1;
}
"#;

/// Boots the arm64 `Image` under QEMU with an initramfs holding a static
/// aarch64 `/init` and four copies of the module (unsigned, signed by
/// another key, tampered, good); returns the serial console.
fn boot_with_module_variants(image: &Path, ko: &Path) -> String {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("initramfs");
    for dir in ["m", "proc", "dev"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(d.path().join("init.c"), INIT_C).unwrap();
    common::run(
        Command::new("aarch64-linux-gnu-gcc")
            .args(["-static", "-Os", "-o"])
            .arg(root.join("init"))
            .arg(d.path().join("init.c")),
    );
    for (name, bytes) in common::demo::module_variants(ko) {
        fs::write(root.join(format!("m/{name}.ko")), bytes).unwrap();
    }
    common::sh(
        &root,
        "mknod -m 0600 dev/console c 5 1 && \
         find . | /bin/busybox cpio -o -H newc > ../initramfs.cpio 2>/dev/null",
    );
    let out = Command::new("timeout")
        .args([
            "300",
            "qemu-system-aarch64",
            "-M",
            "virt",
            "-cpu",
            "cortex-a57",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(image)
        .arg("-initrd")
        .arg(d.path().join("initramfs.cpio"))
        .args(["-append", "console=ttyAMA0 module.sig_enforce=1 panic=-1"])
        .output()
        .unwrap_or_else(|e| panic!("qemu-system-aarch64: {e} (run `make setup`)"));
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qemu: {console}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    console
}
