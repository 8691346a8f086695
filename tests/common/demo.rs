//! The bundled demo tree for tests that build it: a copy to change freely,
//! the build arguments for Debian's linux-source-6.1, and what the outputs
//! hold (the kernel release, a module's modinfo), and the module variants
//! a boot test loads (good, unsigned, foreign, tampered).
#![allow(dead_code)] // not every test binary uses every helper

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const LINUX_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";

/// `--build-arg LINUX_SOURCE_SHA256=… --build-arg LINUX_SOURCE_SHA512=…`
/// for the installed linux-source-6.1 (Debian updates it: never pinned).
pub fn digest_args() -> Vec<String> {
    use sha2::{Digest, Sha256, Sha512};
    let bytes =
        fs::read(LINUX_SOURCE).unwrap_or_else(|e| panic!("{LINUX_SOURCE}: {e} (run `make setup`)"));
    vec![
        "--build-arg".into(),
        format!(
            "LINUX_SOURCE_SHA256={}",
            hex::encode(Sha256::digest(&bytes))
        ),
        "--build-arg".into(),
        format!(
            "LINUX_SOURCE_SHA512={}",
            hex::encode(Sha512::digest(&bytes))
        ),
    ]
}

/// A copy of the project's definitions and fixtures, to change freely.
pub fn copy_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for d in ["pkgs", "extensions", "fixtures"] {
        let st = Command::new("cp")
            .arg("-a")
            .arg(root.join(d))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    dir
}

/// The one kernel release under `<out>/kernel/usr/lib/modules`.
pub fn release(out: &Path) -> String {
    let modules = out.join("kernel/usr/lib/modules");
    let mut rels: Vec<String> = fs::read_dir(&modules)
        .unwrap_or_else(|e| panic!("{}: {e}", modules.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(rels.len(), 1, "one kernel release: {rels:?}");
    rels.remove(0)
}

/// `modinfo -F field ko` (kmod reads modules of any architecture).
pub fn modinfo(ko: &Path, field: &str) -> String {
    let o = Command::new("modinfo")
        .args(["-F", field])
        .arg(ko)
        .output()
        .unwrap();
    assert!(o.status.success(), "modinfo {}", ko.display());
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The built module `ko` and three copies the kernel must refuse: without
/// its signature, signed by another session's key, and with one byte of
/// its content flipped. Named as the boot tests' init reports them.
pub fn module_variants(ko: &Path) -> [(&'static str, Vec<u8>); 4] {
    use composer::sign::{Session, kmod};
    let good = fs::read(ko).unwrap();
    let content = kmod::unsigned_content(&good).unwrap().to_vec();
    let foreign = Session::start().unwrap().sign_module(&content).unwrap();
    let mut tampered = good.clone();
    tampered[content.len() / 2] ^= 0x01;
    [
        ("good", good),
        ("unsigned", content),
        ("foreign", foreign),
        ("tampered", tampered),
    ]
}

/// What the booted kernel said of each variant (`RESULT <name> loaded` or
/// `RESULT <name> refused: <error>`): only the good one loads, the others
/// are rejected for their key, and the good one is in /proc/modules.
pub fn assert_module_variants(console: &str) {
    for (variant, expected) in [
        ("unsigned", "refused"),
        ("foreign", "refused"),
        ("tampered", "refused"),
        ("good", "loaded"),
    ] {
        let line = console
            .lines()
            .find(|l| l.starts_with(&format!("RESULT {variant} ")))
            .unwrap_or_else(|| panic!("no result for {variant}:\n{console}"));
        assert!(line.contains(expected), "{line}\n{console}");
        if expected == "refused" {
            assert!(line.contains("Key was rejected by service"), "{line}");
        }
    }
    assert!(
        console.contains("hello_pcie "),
        "listed in /proc/modules:\n{console}"
    );
}

/// What the booted kernel listed in /proc/keys (lines `KEYS <line>`): its
/// builtin trusted keyring holds one key, the certificate `cert` (DER),
/// known by its subject key identifier; no other X.509 key is loaded.
pub fn assert_builtin_keys(console: &str, cert: &Path) {
    let keys: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix("KEYS "))
        .collect();
    assert!(
        keys.iter()
            .any(|l| l.contains(" keyring ") && l.ends_with(".builtin_trusted_keys: 1")),
        "the builtin trusted keyring holds one key:\n{}",
        keys.join("\n")
    );
    let x509: Vec<&&str> = keys.iter().filter(|l| l.contains(" asymmetri ")).collect();
    assert_eq!(x509.len(), 1, "one X.509 key: {keys:#?}");
    let out = Command::new("openssl")
        .args([
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-ext",
            "subjectKeyIdentifier",
            "-in",
        ])
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let skid: String = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim()
        .replace(':', "")
        .to_lowercase();
    assert!(skid.len() >= 16, "a subject key identifier: {text}");
    assert!(
        x509[0].contains(&format!(": {skid}: X509.")),
        "the key is the certificate {} (SKID {skid}): {}",
        cert.display(),
        x509[0]
    );
}

/// `../shared/sources`: the mirror of upstream archives beside the project.
pub fn shared_sources() -> PathBuf {
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
pub fn firmware_standin(dir: &Path) -> Vec<String> {
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
