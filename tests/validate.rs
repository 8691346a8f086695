//! Validation rules through the real `composer validate-rootfs`: Talos'
//! own good and bad extension trees classified as Talos classifies them,
//! and a passing extension (signed modules, manifest, libraries) in which
//! each test breaks exactly one thing and looks for the rule and the path.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use composer::sign::Session;
use composer::sign::session::KeyType;
use composer::validate::{self, Context, Kind, Selection};
use tempfile::TempDir;

fn talos(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/talos-testdata/talos/pkg/machinery/extensions/testdata")
        .join(case)
}

/// Runs `composer validate-rootfs ARGS`; (exit code, stdout + stderr).
fn validate_rootfs(cwd: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["validate-rootfs"];
    all.extend_from_slice(args);
    let out = common::composer(cwd, &all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A relocatable ELF object whose `.modinfo` holds `entries`, compiled
/// with the system C compiler, as a stand-in for a kernel module.
fn ko(entries: &[&str]) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let mut c = String::from("int init_module(void) { return 0; }\n");
    for (i, e) in entries.iter().enumerate() {
        c.push_str(&format!(
            "static const char m{i}[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"{e}\";\n"
        ));
    }
    fs::write(d.path().join("m.c"), c).unwrap();
    let out = Command::new("cc")
        .args(["-c", "-O0", "m.c", "-o", "m.ko"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(d.path().join("m.ko")).unwrap()
}

/// The modules of the passing tree (compiled once per test binary).
fn modules() -> &'static (Vec<u8>, Vec<u8>) {
    static M: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    M.get_or_init(|| {
        (
            ko(&[
                "license=GPL",
                "name=hello",
                "depends=helper,ext4",
                "vermagic=6.1.0 SMP mod_unload",
            ]),
            ko(&[
                "license=GPL",
                "name=helper",
                "depends=",
                "vermagic=6.1.0 SMP mod_unload",
            ]),
        )
    })
}

const MANIFEST: &str = "version: v1alpha1
metadata:
  name: hello
  version: 1.0.0
  author: composer tests
  description: |
    A test extension.
  compatibility:
    talos:
      version: \">= v1.9.0\"
";

/// A passing extension image at `img/` with the session's certificate at
/// `cert.pem`.
struct Fixture {
    dir: TempDir,
    session: Session,
}

impl Fixture {
    fn img(&self) -> PathBuf {
        self.dir.path().join("img")
    }

    fn rootfs(&self) -> PathBuf {
        self.img().join("rootfs")
    }

    fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.img().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        p
    }

    fn signed(&self, module: &[u8]) -> Vec<u8> {
        self.session.sign_module(module).unwrap()
    }

    /// `validate-rootfs img --cert cert.pem --package hello EXTRA...`.
    fn run(&self, extra: &[&str]) -> (i32, String) {
        let mut args = vec!["img", "--cert", "cert.pem", "--package", "hello"];
        args.extend_from_slice(extra);
        validate_rootfs(self.dir.path(), &args)
    }

    /// Exit 1 and a finding of `rule` at `path` whose message contains
    /// `message`.
    fn assert_finding(&self, rule: &str, path: &str, message: &str) -> String {
        let (code, out) = self.run(&[]);
        assert_eq!(code, 1, "{out}");
        assert_has(&out, "error", rule, path, message);
        out
    }
}

fn assert_has(out: &str, severity: &str, rule: &str, path: &str, message: &str) {
    let prefix = format!("{severity}[{rule}]: {path}: ");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(message)),
        "no `{prefix}...{message}` in:\n{out}"
    );
}

fn passing() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::generate(KeyType::EcdsaP384, 0).unwrap();
    fs::write(dir.path().join("cert.pem"), session.cert_pem()).unwrap();
    let f = Fixture { dir, session };
    let (hello, helper) = modules();
    f.write("manifest.yaml", MANIFEST);
    let mods = "rootfs/usr/lib/modules/6.1.0";
    f.write(&format!("{mods}/extra/hello.ko"), f.signed(hello));
    f.write(&format!("{mods}/extra/helper.ko"), f.signed(helper));
    f.write(
        &format!("{mods}/modules.builtin"),
        "kernel/fs/ext4/ext4.ko\n",
    );
    f.write("rootfs/usr/local/lib/libhello.so", b"\x7fELF not really");
    symlink(
        "libhello.so",
        f.rootfs().join("usr/local/lib/libhello.so.1"),
    )
    .unwrap();
    f.write(
        "rootfs/usr/local/share/hello/README",
        "-----BEGIN PRIVATE KEY----- is what we look for\n",
    );
    // A certificate is not a key.
    f.write(
        "rootfs/usr/local/share/hello/cert.der",
        f.session.cert_der(),
    );
    f.write("rootfs/etc/cri/conf.d/hello.toml", "[plugins]\n");
    f
}

#[test]
fn passing_tree_passes_every_rule() {
    let f = passing();
    let (code, out) = f.run(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("8 rules run: 0 errors, 0 warnings"), "{out}");
    let (code, out) = f.run(&["--strict", "--talos-version", "v1.9.2"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn talos_good_extension_passes_with_a_version_format_warning() {
    let d = tempfile::tempdir().unwrap();
    let path = talos("good/extension1");
    let (code, out) = validate_rootfs(d.path(), &[path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_has(
        &out,
        "warning",
        "extension-manifest",
        "/manifest.yaml",
        "\"20220117.0-v1.0.0\" matches none of the formats",
    );
    assert!(
        out.contains("(extension): 8 rules run: 0 errors, 1 warning"),
        "{out}"
    );
    // --strict makes the warning fail.
    let (code, _) = validate_rootfs(d.path(), &[path.to_str().unwrap(), "--strict"]);
    assert_eq!(code, 1);
}

#[test]
fn talos_bad_extensions_fail_with_rule_and_path() {
    let d = tempfile::tempdir().unwrap();
    for (case, rule, path, message) in [
        (
            "bad/wrongfiles",
            "extension-layout",
            "/a",
            "unexpected file \"a\"",
        ),
        (
            "bad/emptymanifest",
            "extension-manifest",
            "/manifest.yaml",
            "unsupported manifest version: \"\"",
        ),
        (
            "bad/norootfs",
            "extension-layout",
            "/rootfs",
            "extension rootfs is missing",
        ),
        (
            "bad/badpaths",
            "extension-paths",
            "/boot/vmlinuz",
            "path \"/boot/vmlinuz\" is not allowed in extensions",
        ),
        (
            "bad/usrmerge",
            "extension-paths",
            "/usr/lib64/a.so",
            "path \"/usr/lib64/a.so\" is not allowed in extensions",
        ),
    ] {
        let p = talos(case);
        let (code, out) = validate_rootfs(d.path(), &[p.to_str().unwrap(), "--kind", "extension"]);
        assert_eq!(code, 1, "{case}: {out}");
        assert_has(&out, "error", rule, path, message);
    }
}

#[test]
fn extension_paths_rejects_usr_localfoo() {
    let f = passing();
    f.write("rootfs/usr/localfoo/x", "x");
    f.assert_finding(
        "extension-paths",
        "/usr/localfoo/x",
        "path \"/usr/localfoo/x\" is not allowed in extensions",
    );
}

#[test]
fn extension_paths_rejects_world_writable_file() {
    let f = passing();
    let p = f.write("rootfs/usr/local/share/hello/open", "x");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
    f.assert_finding(
        "extension-paths",
        "/usr/local/share/hello/open",
        "world-writeable files are not allowed",
    );
}

#[test]
fn extension_paths_rejects_device_node() {
    let f = passing();
    let p = f.rootfs().join("usr/local/null");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mknod only reads it.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EPERM) {
            eprintln!("note: mknod is not permitted here; device node case skipped");
            return;
        }
        panic!("mknod: {err}");
    }
    f.assert_finding(
        "extension-paths",
        "/usr/local/null",
        "special files are not allowed: \"/usr/local/null\" is a character device",
    );
}

#[test]
fn extension_paths_rejects_fifo() {
    let f = passing();
    let p = f.rootfs().join("usr/local/pipe");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    f.assert_finding(
        "extension-paths",
        "/usr/local/pipe",
        "special files are not allowed: \"/usr/local/pipe\" is a fifo",
    );
}

#[test]
fn extension_paths_rejects_symlink_to_etc_shadow() {
    let f = passing();
    symlink("/etc/shadow", f.rootfs().join("usr/local/lib/shadow")).unwrap();
    f.assert_finding(
        "extension-paths",
        "/usr/local/lib/shadow",
        "symlink target \"/etc/shadow\" resolves to /etc/shadow, outside the paths",
    );
}

#[test]
fn extension_paths_rejects_symlink_escaping_the_rootfs() {
    let f = passing();
    symlink(
        "../../../../etc/passwd",
        f.rootfs().join("usr/local/lib/up"),
    )
    .unwrap();
    f.assert_finding(
        "extension-paths",
        "/usr/local/lib/up",
        "escapes the extension's rootfs",
    );
}

#[test]
fn extension_paths_reports_the_topmost_empty_disallowed_directory_once() {
    let f = passing();
    fs::create_dir_all(f.rootfs().join("boot/grub")).unwrap();
    let out = f.assert_finding(
        "extension-paths",
        "/boot",
        "directory \"/boot\" is not allowed in extensions",
    );
    assert!(!out.contains("[extension-paths]: /boot/grub"), "{out}");
}

#[test]
fn modules_compressed_with_xz_are_checked_decompressed() {
    let f = passing();
    let dir = f.rootfs().join("usr/lib/modules/6.1.0/extra");
    let xz = |bytes: &[u8]| {
        let mut out = Vec::new();
        let mut enc = xz2::read::XzEncoder::new(bytes, 6);
        std::io::Read::read_to_end(&mut enc, &mut out).unwrap();
        out
    };
    fs::remove_file(dir.join("helper.ko")).unwrap();
    fs::write(dir.join("helper.ko.xz"), xz(&f.signed(&modules().1))).unwrap();
    let (code, out) = f.run(&[]);
    assert_eq!(code, 0, "{out}");
    fs::write(dir.join("helper.ko.xz"), xz(&modules().1)).unwrap();
    f.assert_finding(
        "modules-signed",
        "/usr/lib/modules/6.1.0/extra/helper.ko.xz",
        "not signed",
    );
}

/// A plain rootfs with one file at `rel`, validated as `--kind rootfs`.
fn plain_rootfs(rel: &str) -> (i32, String) {
    let d = common::tree(&[
        ("root/usr/bin/tool", "x"),
        (format!("root/{rel}").as_str(), "x"),
    ]);
    validate_rootfs(d.path(), &["root", "--kind", "rootfs"])
}

#[test]
fn fhs_rejects_usr_share_man() {
    let (code, out) = plain_rootfs("usr/share/man/man1/tool.1");
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        "error",
        "fhs",
        "/usr/share/man",
        "`usr/share/man` is forbidden",
    );
    // One finding for the directory, none for the file inside.
    assert!(!out.contains("/usr/share/man/man1"), "{out}");
}

#[test]
fn fhs_accepts_usr_share_manual() {
    let (code, out) = plain_rootfs("usr/share/manual/index.txt");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(rootfs): 5 rules run: 0 errors"), "{out}");
}

#[test]
fn fhs_rejects_hidden_top_level_directory() {
    let (code, out) = plain_rootfs(".hidden/x");
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        "error",
        "fhs",
        "/.hidden",
        "not an FHS top-level directory",
    );
}

#[test]
fn fhs_rejects_man_pages_in_an_extension_rootfs() {
    let f = passing();
    f.write("rootfs/usr/local/share/man/man1/hello.1", "x");
    f.assert_finding("fhs", "/usr/local/share/man", "is forbidden");
}

#[test]
fn extension_manifest_rejects_missing_version() {
    let f = passing();
    f.write("manifest.yaml", MANIFEST.replace("version: v1alpha1\n", ""));
    f.assert_finding(
        "extension-manifest",
        "/manifest.yaml",
        "unsupported manifest version: \"\"",
    );
}

#[test]
fn extension_manifest_rejects_another_package_name() {
    let f = passing();
    let (code, out) = validate_rootfs(
        f.dir.path(),
        &["img", "--cert", "cert.pem", "--package", "other"],
    );
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        "error",
        "extension-manifest",
        "/manifest.yaml",
        "3:9: pkg name does not match extension name: other != hello",
    );
}

#[test]
fn extension_manifest_rejects_unsatisfied_talos_version() {
    let f = passing();
    let (code, out) = f.run(&["--talos-version", "1.8.0"]);
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        "error",
        "extension-manifest",
        "/manifest.yaml",
        "version constraint >= v1.9.0 can't be satisfied with Talos version 1.8.0",
    );
}

#[test]
fn modules_vermagic_rejects_two_release_dirs() {
    let f = passing();
    let other = ko(&["name=other", "vermagic=6.2.0 SMP mod_unload"]);
    f.write(
        "rootfs/usr/lib/modules/6.2.0/extra/other.ko",
        f.signed(&other),
    );
    f.assert_finding(
        "modules-vermagic",
        "/usr/lib/modules",
        "2 kernel release directories (6.1.0, 6.2.0)",
    );
}

#[test]
fn modules_signed_rejects_unsigned_module() {
    let f = passing();
    f.write("rootfs/usr/lib/modules/6.1.0/extra/helper.ko", &modules().1);
    f.assert_finding(
        "modules-signed",
        "/usr/lib/modules/6.1.0/extra/helper.ko",
        "not signed",
    );
}

#[test]
fn modules_signed_rejects_module_signed_by_another_key() {
    let f = passing();
    let other = Session::generate(KeyType::EcdsaP384, 0).unwrap();
    f.write(
        "rootfs/usr/lib/modules/6.1.0/extra/helper.ko",
        other.sign_module(&modules().1).unwrap(),
    );
    f.assert_finding(
        "modules-signed",
        "/usr/lib/modules/6.1.0/extra/helper.ko",
        "signed by a key that is not trusted",
    );
}

#[test]
fn modules_signed_without_a_certificate_warns_that_the_signer_is_unchecked() {
    let f = passing();
    let (code, out) = validate_rootfs(f.dir.path(), &["img"]);
    assert_eq!(code, 0, "{out}");
    assert_has(
        &out,
        "warning",
        "modules-signed",
        "/usr/lib/modules",
        "2 module signature(s) are well-formed, but no trusted certificate was given",
    );
    let (code, _) = validate_rootfs(f.dir.path(), &["img", "--strict"]);
    assert_eq!(code, 1);
    // Unsigned is still an error without a certificate.
    f.write("rootfs/usr/lib/modules/6.1.0/extra/helper.ko", &modules().1);
    let (code, out) = validate_rootfs(f.dir.path(), &["img"]);
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        "error",
        "modules-signed",
        "/usr/lib/modules/6.1.0/extra/helper.ko",
        "not signed",
    );
}

#[test]
fn modules_vermagic_rejects_module_built_for_another_release() {
    let f = passing();
    let m = ko(&["name=helper", "vermagic=6.2.0 SMP mod_unload"]);
    f.write("rootfs/usr/lib/modules/6.1.0/extra/helper.ko", f.signed(&m));
    f.assert_finding(
        "modules-vermagic",
        "/usr/lib/modules/6.1.0/extra/helper.ko",
        "vermagic \"6.2.0 SMP mod_unload\" is not for kernel 6.1.0",
    );
}

#[test]
fn modules_depends_rejects_missing_dependency() {
    let f = passing();
    fs::remove_file(f.rootfs().join("usr/lib/modules/6.1.0/extra/helper.ko")).unwrap();
    f.assert_finding(
        "modules-depends",
        "/usr/lib/modules/6.1.0/extra/hello.ko",
        "depends on `helper`, which no module in /usr/lib/modules/6.1.0 provides",
    );
    // The node's own modules may provide it.
    let (code, out) = f.run(&["--allow-in-tree-deps"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn modules_depends_uses_modules_builtin() {
    let f = passing();
    fs::remove_file(f.rootfs().join("usr/lib/modules/6.1.0/modules.builtin")).unwrap();
    f.assert_finding(
        "modules-depends",
        "/usr/lib/modules/6.1.0/extra/hello.ko",
        "depends on `ext4`, which no module in /usr/lib/modules/6.1.0 provides and there is no modules.builtin",
    );
}

#[test]
fn kmod_image_host_symlink_allows_in_tree_dependencies() {
    let d = tempfile::tempdir().unwrap();
    let s = Session::generate(KeyType::EcdsaP384, 0).unwrap();
    fs::write(d.path().join("cert.pem"), s.cert_pem()).unwrap();
    let rel = d.path().join("kmod/opt/lib/modules/6.1.0");
    fs::create_dir_all(&rel).unwrap();
    let m = ko(&["name=hello", "depends=i2c_core", "vermagic=6.1.0 SMP"]);
    fs::write(rel.join("hello.ko"), s.sign_module(&m).unwrap()).unwrap();
    let args = ["kmod", "--kind", "kmod", "--cert", "cert.pem"];
    let (code, out) = validate_rootfs(d.path(), &args);
    assert_eq!(code, 1, "{out}");
    assert_has(
        &out,
        "error",
        "modules-depends",
        "/opt/lib/modules/6.1.0/hello.ko",
        "depends on `i2c_core`",
    );
    symlink("/lib/modules/6.1.0", rel.join("host")).unwrap();
    let (code, out) = validate_rootfs(d.path(), &args);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("(kmod): 4 rules run: 0 errors, 0 warnings"),
        "{out}"
    );
}

#[test]
fn no_secrets_rejects_pem_key_hidden_in_a_text_file() {
    let f = passing();
    let key = "notes\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/Pu\n-----END EC PRIVATE KEY-----\n";
    f.write("rootfs/usr/local/share/x.txt", key);
    f.assert_finding(
        "no-secrets",
        "/usr/local/share/x.txt",
        "PEM private key `-----BEGIN EC PRIVATE KEY-----` at byte 6",
    );
}

#[test]
fn no_secrets_rejects_a_der_key() {
    let f = passing();
    let key = Session::generate(KeyType::EcdsaP384, 0).unwrap();
    f.write(
        "rootfs/usr/local/share/hello/data.bin",
        key.secret_patterns_for_audit()[0].as_slice(),
    );
    f.assert_finding(
        "no-secrets",
        "/usr/local/share/hello/data.bin",
        "the file is a DER PKCS#8 private key",
    );
}

#[test]
fn no_secrets_finds_the_session_key_bytes_inside_a_large_file() {
    let f = passing();
    let patterns = f.session.secret_patterns_for_audit();
    // The raw scalar, 200 KiB into a file (crosses the scan's chunks).
    let mut big = vec![0u8; 400 * 1024];
    let scalar = patterns.last().unwrap();
    big[200 * 1024..200 * 1024 + scalar.len()].copy_from_slice(scalar);
    f.write("rootfs/usr/local/lib/libhello.so", &big);
    let ctx = Context {
        secret_patterns: patterns,
        ..Context::new(Kind::Extension)
    };
    let sel = Selection {
        only: vec!["no-secrets".into()],
        skip: vec![],
    };
    let report = validate::validate(&f.img(), &ctx, &sel).unwrap();
    assert_eq!(report.rules_run, vec!["no-secrets"]);
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert_eq!(
        report.findings[0].to_string(),
        format!(
            "error[no-secrets]: /usr/local/lib/libhello.so: bytes of a signing key that must never leave composer, at byte {}",
            200 * 1024
        )
    );
}

#[test]
fn unknown_rule_is_an_error_with_a_suggestion() {
    let f = passing();
    let (code, out) = f.run(&["--rules", "fhs,extension-path"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("unknown rule `extension-path` (did you mean `extension-paths`?)"),
        "{out}"
    );
    let (code, out) = f.run(&["--skip", "secrets"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("did you mean `no-secrets`?"), "{out}");
}

#[test]
fn rules_and_skip_pick_what_runs() {
    let d = tempfile::tempdir().unwrap();
    let p = talos("bad/badpaths");
    let p = p.to_str().unwrap();
    let (code, out) = validate_rootfs(
        d.path(),
        &[p, "--rules", "extension-layout,extension-manifest"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 rules run: 0 errors, 1 warning"), "{out}");
    let (code, out) = validate_rootfs(
        d.path(),
        &[p, "--skip", "fhs", "--skip", "extension-manifest"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        !out.contains("[fhs]") && out.contains("[extension-paths]"),
        "{out}"
    );
    assert!(out.contains("6 rules run: 1 error, 0 warnings"), "{out}");
}

#[test]
fn json_report_lists_rules_and_findings() {
    let d = tempfile::tempdir().unwrap();
    let p = talos("bad/usrmerge");
    let out = common::composer(
        d.path(),
        &["validate-rootfs", p.to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["kind"], "extension");
    assert_eq!(v["rules_run"].as_array().unwrap().len(), 8);
    let findings = v["findings"].as_array().unwrap();
    assert!(findings.iter().any(|f| f["rule"] == "extension-paths"
        && f["severity"] == "error"
        && f["path"] == "/usr/lib64/a.so"));
}

#[test]
fn rules_list_shows_every_rule_with_severity_and_kinds() {
    let d = tempfile::tempdir().unwrap();
    let out = common::composer(d.path(), &["rules", "--list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("NAME"), "{text}");
    for r in validate::rules() {
        assert!(
            text.lines()
                .any(|l| l.starts_with(r.name()) && l.contains(r.description())),
            "{text}"
        );
    }
    assert!(
        text.contains("extension-paths     error     extension"),
        "{text}"
    );
    let out = common::composer(d.path(), &["rules", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), validate::rules().len());
    assert_eq!(v[0]["name"], "fhs");
    assert_eq!(
        v[0]["applies_to"],
        serde_json::json!(["extension", "rootfs"])
    );
}
