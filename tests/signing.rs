//! Module signatures made by composer's session key: checked by composer
//! and by OpenSSL's CMS implementation; damaged, unsigned and foreign
//! signatures refused with a reason.

mod common;

use std::fs;
use std::process::Command;

use composer::sign::Session;
use composer::sign::kmod::{self, MAGIC, SigError};
use composer::sign::verify::{Trusted, verify};

fn module_bytes() -> Vec<u8> {
    let mut v = b"\x7fELF".to_vec();
    v.extend((0..50_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    v
}

fn trusted(s: &Session) -> Vec<Trusted> {
    vec![Trusted::new(s.certificate().clone())]
}

#[test]
fn a_session_signature_verifies_and_has_the_kernel_layout() {
    let s = Session::start().unwrap();
    let m = module_bytes();
    let signed = s.sign_module(&m).unwrap();
    assert!(signed.starts_with(&m));
    assert!(signed.ends_with(MAGIC));
    let split = kmod::split(&signed).unwrap();
    assert_eq!(split.content, &m[..]);
    let trailer = &signed[signed.len() - MAGIC.len() - 12..signed.len() - MAGIC.len()];
    assert_eq!(&trailer[..8], &[0, 0, 2, 0, 0, 0, 0, 0]);
    let sig_len = u32::from_be_bytes(trailer[8..].try_into().unwrap()) as usize;
    assert_eq!(sig_len, split.cms.unwrap().len());
    let v = verify(&signed, &trusted(&s)).unwrap();
    assert_eq!((v.algorithm, v.hash), ("ecdsa-p384", "sha384"));
    // Re-signing replaces the old signature instead of stacking one more.
    let again = s.sign_module(&signed).unwrap();
    assert_eq!(kmod::split(&again).unwrap().content, &m[..]);
}

#[test]
fn openssl_cms_verifies_a_session_signature() {
    let s = Session::start().unwrap();
    let m = module_bytes();
    let signed = s.sign_module(&m).unwrap();
    let d = tempfile::tempdir().unwrap();
    let cms = kmod::split(&signed).unwrap().cms.unwrap().to_vec();
    fs::write(d.path().join("content"), &m).unwrap();
    fs::write(d.path().join("sig.der"), &cms).unwrap();
    fs::write(d.path().join("cert.pem"), s.cert_pem()).unwrap();
    let out = Command::new("openssl")
        .args([
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "sig.der",
            "-content",
            "content",
            "-certfile",
            "cert.pem",
            "-nointern",
            "-noverify",
            "-out",
            "/dev/null",
        ])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the CMS has no signed attributes and no certificates.
    let print = Command::new("openssl")
        .args([
            "cms", "-cmsout", "-print", "-inform", "DER", "-in", "sig.der",
        ])
        .current_dir(d.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&print.stdout);
    assert!(text.contains("signedAttrs:\n          <ABSENT>"), "{text}");
    assert!(text.contains("certificates:\n      <ABSENT>"), "{text}");
    assert!(text.contains("ecdsa-with-SHA384"), "{text}");
}

#[test]
fn unsigned_foreign_and_tampered_modules_are_refused_with_the_reason() {
    let s = Session::start().unwrap();
    let other = Session::start().unwrap();
    let m = module_bytes();
    let t = trusted(&s);
    assert_eq!(verify(&m, &t), Err(SigError::Unsigned));
    let foreign = other.sign_module(&m).unwrap();
    assert!(matches!(
        verify(&foreign, &t),
        Err(SigError::UnknownSigner { .. })
    ));
    let mut tampered = s.sign_module(&m).unwrap();
    tampered[100] ^= 1;
    assert_eq!(verify(&tampered, &t), Err(SigError::BadSignature));
}

#[test]
fn damaged_trailers_are_errors_not_panics() {
    let s = Session::start().unwrap();
    let t = trusted(&s);
    let signed = s.sign_module(&module_bytes()).unwrap();
    let n = signed.len();
    // An ELF header, then only the magic: truncated.
    assert_eq!(
        verify(&[b"\x7fELF", MAGIC].concat(), &t),
        Err(SigError::Truncated)
    );
    // sig_len past the start of the file.
    let mut long = signed.clone();
    let at = n - MAGIC.len() - 4;
    long[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(verify(&long, &t), Err(SigError::SigLen { .. })));
    // Wrong id_type.
    let mut id = signed.clone();
    id[n - MAGIC.len() - 12 + 2] = 1;
    assert_eq!(verify(&id, &t), Err(SigError::IdType(1)));
    // Garbage where the CMS should be.
    let mut garbage = signed.clone();
    let cms_len = kmod::split(&signed).unwrap().cms.unwrap().len();
    let start = n - MAGIC.len() - 12 - cms_len;
    for b in &mut garbage[start..start + cms_len] {
        *b = 0x5a;
    }
    assert!(matches!(verify(&garbage, &t), Err(SigError::Cms(_))));
    // Empty input.
    assert_eq!(verify(b"", &t), Err(SigError::NotElf("the file is empty")));
}

#[test]
fn composer_verify_reports_each_module_and_fails_on_any_bad_one() {
    let s = Session::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    let m = module_bytes();
    fs::create_dir_all(d.path().join("mods/extra")).unwrap();
    fs::write(d.path().join("mods/good.ko"), s.sign_module(&m).unwrap()).unwrap();
    fs::write(d.path().join("cert.pem"), s.cert_pem()).unwrap();
    let ok = common::composer(d.path(), &["verify", "mods", "--cert", "cert.pem"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok    mods/good.ko  (ecdsa-p384 sha384"));
    fs::write(d.path().join("mods/extra/plain.ko"), &m).unwrap();
    let bad = common::composer(d.path(), &["verify", "mods", "--cert", "cert.pem"]);
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        out.contains("FAIL  mods/extra/plain.ko: not signed"),
        "{out}"
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("2 module(s) checked, 1 signed by a trusted key, 1 not")
    );
}

/// The kernel's own `scripts/sign-file`, compiled from Debian's
/// linux-source-6.1 (what `make setup` installs) against the host OpenSSL.
fn sign_file(dir: &std::path::Path) -> std::path::PathBuf {
    let tarball = "/usr/src/linux-source-6.1.tar.xz";
    assert!(
        std::path::Path::new(tarball).is_file(),
        "{tarball} is missing: run `make setup`"
    );
    let sh = |cmd: &str| common::sh(dir, cmd);
    sh(&format!(
        "tar -xJf {tarball} linux-source-6.1/scripts/sign-file.c linux-source-6.1/scripts/ssl-common.h \
         && gcc -o sign-file linux-source-6.1/scripts/sign-file.c -lcrypto 2>/dev/null"
    ));
    dir.join("sign-file")
}

#[test]
fn sign_file_and_composer_make_byte_identical_rsa_signatures() {
    let d = tempfile::tempdir().unwrap();
    let tool = sign_file(d.path());
    let sh = |cmd: &str| common::sh(d.path(), cmd);
    sh(
        "openssl req -new -nodes -utf8 -sha256 -days 36500 -batch -x509 -subj /CN=kernel-key \
        -newkey rsa:2048 -keyout key.pem -out cert.pem 2>/dev/null && cat key.pem cert.pem > signing_key.pem",
    );
    let m = module_bytes();
    fs::write(d.path().join("m.ko"), &m).unwrap();
    sh(&format!(
        "{} sha256 signing_key.pem cert.pem m.ko",
        tool.display()
    ));
    let by_sign_file = fs::read(d.path().join("m.ko")).unwrap();

    let s = Session::from_pem(&d.path().join("signing_key.pem")).unwrap();
    assert!(!s.is_ephemeral());
    let by_composer = s.sign_module(&m).unwrap();
    assert_eq!(
        hex(&by_composer[m.len()..]),
        hex(&by_sign_file[m.len()..]),
        "the appended signature differs from sign-file's"
    );
    // And each verifies the other's.
    let v = verify(&by_sign_file, &trusted(&s)).unwrap();
    assert_eq!((v.algorithm, v.hash), ("rsa", "sha256"));
}

#[test]
fn a_sign_file_ecdsa_signature_verifies_with_composer() {
    let d = tempfile::tempdir().unwrap();
    let tool = sign_file(d.path());
    let sh = |cmd: &str| common::sh(d.path(), cmd);
    sh(
        "openssl req -new -nodes -utf8 -sha384 -days 36500 -batch -x509 -subj /CN=kernel-key \
        -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -keyout key.pem -out cert.pem 2>/dev/null \
        && cat key.pem cert.pem > signing_key.pem",
    );
    fs::write(d.path().join("m.ko"), module_bytes()).unwrap();
    sh(&format!(
        "{} sha384 signing_key.pem cert.pem m.ko",
        tool.display()
    ));
    let signed = fs::read(d.path().join("m.ko")).unwrap();
    let s = Session::from_pem(&d.path().join("signing_key.pem")).unwrap();
    let v = verify(&signed, &trusted(&s)).unwrap();
    assert_eq!((v.algorithm, v.hash), ("ecdsa-p384", "sha384"));
    // composer's own signature with the same key verifies too.
    verify(&s.sign_module(&module_bytes()).unwrap(), &trusted(&s)).unwrap();
}

#[test]
fn an_ephemeral_rsa_session_signs_deterministically() {
    let s = Session::generate(composer::sign::session::KeyType::Rsa, 2048).unwrap();
    assert!(s.is_ephemeral());
    let m = module_bytes();
    let a = s.sign_module(&m).unwrap();
    assert_eq!(
        a,
        s.sign_module(&m).unwrap(),
        "PKCS#1 v1.5 is deterministic"
    );
    let v = verify(&a, &trusted(&s)).unwrap();
    assert_eq!((v.algorithm, v.hash), ("rsa", "sha256"));
}

#[test]
fn a_mismatched_bring_your_own_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let sh = |cmd: &str| common::sh(d.path(), cmd);
    sh(
        "openssl req -new -nodes -batch -x509 -subj /CN=a -newkey rsa:2048 -keyout a.pem -out a.crt 2>/dev/null \
        && openssl req -new -nodes -batch -x509 -subj /CN=b -newkey rsa:2048 -keyout b.pem -out b.crt 2>/dev/null \
        && cat a.pem b.crt > mixed.pem && openssl genrsa -traditional -out old.pem 2048 2>/dev/null && cat a.crt >> old.pem",
    );
    let e = Session::from_pem(&d.path().join("mixed.pem"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not the private key's"), "{e}");
    let e = Session::from_pem(&d.path().join("old.pem"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("openssl pkcs8 -topk8 -nocrypt"), "{e}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn verify_gives_a_clear_error_for_each_hostile_module() {
    let s = Session::start().unwrap();
    let t = trusted(&s);
    assert_eq!(verify(b"", &t), Err(SigError::NotElf("the file is empty")));
    assert_eq!(
        verify(b"#!/bin/sh\n", &t),
        Err(SigError::NotElf("no ELF header"))
    );

    let d = tempfile::tempdir().unwrap();
    let m = module_bytes();
    let sh = |cmd: &str| common::sh(d.path(), cmd);
    // A CMS with signed attributes (OpenSSL's default), by the trusted key's
    // twin: same shape otherwise.
    sh(
        "openssl req -new -nodes -batch -x509 -subj /CN=attrs -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 \
        -keyout key.pem -out cert.pem 2>/dev/null && cat key.pem cert.pem > both.pem",
    );
    fs::write(d.path().join("content"), &m).unwrap();
    sh(
        "openssl cms -sign -binary -in content -signer cert.pem -inkey key.pem -outform DER -out sig.der -nocerts -md sha384",
    );
    let cms = fs::read(d.path().join("sig.der")).unwrap();
    let mut with_attrs = m.clone();
    with_attrs.extend_from_slice(&cms);
    with_attrs.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
    with_attrs.extend_from_slice(&(cms.len() as u32).to_be_bytes());
    with_attrs.extend_from_slice(MAGIC);
    let byo = Session::from_pem(&d.path().join("both.pem")).unwrap();
    assert_eq!(
        verify(&with_attrs, &trusted(&byo)),
        Err(SigError::SignedAttributes)
    );

    // The signedData OID replaced by id-data.
    let good = s.sign_module(&m).unwrap();
    let oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
    ];
    let at = good.windows(oid.len()).position(|w| w == oid).unwrap();
    let mut wrong = good.clone();
    wrong[at + oid.len() - 1] = 0x01;
    match verify(&wrong, &t) {
        Err(SigError::Cms(msg)) => assert!(msg.contains("not signedData"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn verify_reports_unreadable_deep_trees_instead_of_skipping_them() {
    use rustix::fs::{Mode, OFlags, mkdirat, openat};
    let d = tempfile::tempdir().unwrap();
    let s = Session::start().unwrap();
    fs::create_dir(d.path().join("mods")).unwrap();
    fs::write(
        d.path().join("mods/good.ko"),
        s.sign_module(&module_bytes()).unwrap(),
    )
    .unwrap();
    fs::write(d.path().join("cert.pem"), s.cert_pem()).unwrap();
    // 10 000 nested directories, made relative to each other (the full
    // path is far past PATH_MAX).
    let mut fd = openat(
        rustix::fs::CWD,
        d.path().join("mods"),
        OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..10_000 {
        mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = openat(&fd, "d", OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let out = common::composer(d.path(), &["verify", "mods", "--cert", "cert.pem"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok    mods/good.ko"), "{stdout}");
    assert!(stdout.contains("cannot read"), "{stdout}");
}
