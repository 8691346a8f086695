//! Modules for a kernel the build did not make (no signing session signs
//! them), as `composer build` lets them leave: `--signing-key` signs a copy
//! at export while the cache keeps them unsigned (a new key rebuilds
//! nothing), `--unsigned` leaves them so, and the user's key never ends up
//! in an image. The modules are small objects compiled by the host's cc
//! (`common::kmod`); no kernel is built.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::kmod::{kmod_pkg, user_key};

const RELEASE: &str = "6.1.0-57-cloud-amd64";

fn project(stage: &str) -> tempfile::TempDir {
    common::project(
        "format: v1alpha2\n",
        &[("hello-kmod/pkg.yaml", stage.to_string())],
    )
}

/// `composer --root p build --format kmm --kernel-release RELEASE ARGS hello-kmod`.
fn build(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "--root",
        "p",
        "build",
        "--cache-dir",
        "cache",
        "--format",
        "kmm",
        "--kernel-release",
        RELEASE,
    ];
    all.extend_from_slice(args);
    all.push("hello-kmod");
    common::composer(dir, &all)
}

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn verify(dir: &Path, cert: &Path) -> Output {
    common::composer(
        dir,
        &[
            "verify",
            "_out/hello-kmod",
            "--cert",
            cert.to_str().unwrap(),
        ],
    )
}

fn module(dir: &Path) -> PathBuf {
    dir.join(format!(
        "_out/hello-kmod/usr/lib/modules/{RELEASE}/extra/hello_kmod.ko"
    ))
}

fn signed(ko: &Path) -> bool {
    fs::read(ko)
        .unwrap()
        .ends_with(b"~Module signature appended~\n")
}

#[test]
fn a_new_key_signs_again_without_rebuilding_and_unsigned_leaves_them_so() {
    let keys = tempfile::tempdir().unwrap();
    let (a, a_crt) = user_key(keys.path(), "a");
    let (b, b_crt) = user_key(keys.path(), "b");
    let p = project(&kmod_pkg("hello-kmod", RELEASE, "hello"));

    let o = build(p.path(), &["--signing-key", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", said(&o));
    assert!(said(&o).contains("built 1 stage(s)"), "{}", said(&o));
    assert!(verify(p.path(), &a_crt).status.success());

    let o = build(p.path(), &["--signing-key", b.to_str().unwrap()]);
    let text = said(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("built 0 stage(s), 1 cached"), "{text}");
    assert!(
        text.contains(&format!(
            "signed with your ECDSA P-384/SHA-384 key from {}",
            b.display()
        )),
        "{text}"
    );
    assert!(verify(p.path(), &b_crt).status.success(), "signed with b");
    assert_eq!(
        verify(p.path(), &a_crt).status.code(),
        Some(1),
        "not with a"
    );

    // The same output directory, now unsigned: the signed tree is replaced.
    let o = build(p.path(), &["--unsigned"]);
    let text = said(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("left UNSIGNED (--unsigned)"), "{text}");
    assert!(!signed(&module(p.path())), "exported unsigned");
    assert!(
        !p.path().join("_out/.composer/signed/hello-kmod").exists(),
        "no copy left"
    );
}

#[test]
fn the_users_key_in_an_image_is_refused_and_nothing_is_left() {
    let keys = tempfile::tempdir().unwrap();
    let (pem, _) = user_key(keys.path(), "mok");
    // The key's PKCS#8 DER, as a firmware file (a KMM image carries
    // firmware): base64 in the script.
    let der = Command::new("openssl")
        .args(["pkey", "-outform", "DER", "-in"])
        .arg(keys.path().join("mok.key"))
        .output()
        .unwrap();
    assert!(der.status.success());
    let b64 = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&der.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    let b64 = String::from_utf8(b64.stdout).unwrap();
    let stage = kmod_pkg("hello-kmod", RELEASE, "hello").replace(
        "        cc -c -O0",
        &format!(
            "        mkdir -p /out/usr/lib/firmware && echo {b64} | base64 -d > /out/usr/lib/firmware/blob.bin\n        cc -c -O0"
        ),
    );
    let p = project(&stage);
    let o = build(p.path(), &["--signing-key", pem.to_str().unwrap()]);
    let text = said(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("no-secrets"), "{text}");
    assert!(text.contains("blob.bin"), "{text}");
    assert!(!p.path().join("_out/hello-kmod").exists(), "exported");
    assert!(
        !p.path().join("_out/images/hello-kmod").exists(),
        "image written"
    );
    let staging = p.path().join("_out/.composer/signed");
    let left: Vec<_> = fs::read_dir(&staging)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "signed copies left: {left:?}");
}
