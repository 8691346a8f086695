//! Checks a kernel configuration against the signing session before a
//! session stage runs: the kernel must trust the session's certificate,
//! accept its key type and have its hash built in, and must not try to
//! sign modules itself (the session's private key is not in the build).
//!
//! The kernel trusts the session's certificate one of two ways: compiled
//! in (`CONFIG_MODULE_SIG_KEY` is the session certificate's path, so the
//! kernel compiles once per session), or written into the built kernel
//! (`CONFIG_MODULE_SIG_KEY=""`: no key at all at compile time, and
//! `CONFIG_SYSTEM_EXTRA_CERTIFICATE` reserves room for the certificate,
//! which a session stage inserts; the kernel is compiled once for all
//! sessions). In the second way, whether the certificate was put in is
//! checked on the kernel images the session's stages produce
//! (`sign::hooks`).
//!
//! Invariant: only files named `.config` within three levels of the stage's
//! root that enable `CONFIG_MODULE_SIG` are read; a stage with no such file
//! passes untouched.

use std::fs;
use std::path::{Path, PathBuf};

pub use crate::exec::stage::{SESSION_CERT, SESSION_KEY};

use super::session::KeyType;

/// (key type option, hash, option building the hash in) for a key type.
fn kconfig(key: KeyType) -> (&'static str, &'static str, &'static str) {
    match key {
        KeyType::EcdsaP384 => (
            "CONFIG_MODULE_SIG_KEY_TYPE_ECDSA",
            "sha384",
            "CONFIG_CRYPTO_SHA512",
        ),
        KeyType::EcdsaP256 => (
            "CONFIG_MODULE_SIG_KEY_TYPE_ECDSA",
            "sha256",
            "CONFIG_CRYPTO_SHA256",
        ),
        KeyType::Rsa => (
            "CONFIG_MODULE_SIG_KEY_TYPE_RSA",
            "sha256",
            "CONFIG_CRYPTO_SHA256",
        ),
        KeyType::RsaSha512 => (
            "CONFIG_MODULE_SIG_KEY_TYPE_RSA",
            "sha512",
            "CONFIG_CRYPTO_SHA512",
        ),
    }
}

/// Kernel `.config` files under `root` that enable module signing.
pub fn kernel_configs(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .max_depth(3)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && e.file_name() == ".config")
        .map(|e| e.into_path())
        .filter(|p| {
            fs::read_to_string(p)
                .map(|t| t.lines().any(|l| l == "CONFIG_MODULE_SIG=y"))
                .unwrap_or(false)
        })
        .collect()
}

/// Checks every signing-enabled kernel config under `root`. `in_tree`: the
/// kernel may sign during `modules_install` with the session key;
/// `cert_len`: the session certificate's size (DER), which a reserved area
/// must hold.
pub fn check(root: &Path, key: KeyType, in_tree: bool, cert_len: usize) -> Result<(), String> {
    for path in kernel_configs(root) {
        let text = fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        check_text(&text, key, in_tree, cert_len).map_err(|e| format!("/{shown}: {e}"))?;
    }
    Ok(())
}

fn value<'t>(text: &'t str, option: &str) -> Option<&'t str> {
    let prefix = format!("{option}=");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

/// Checks one config's text.
pub fn check_text(text: &str, key: KeyType, in_tree: bool, cert_len: usize) -> Result<(), String> {
    let (type_opt, hash, hash_opt) = kconfig(key);
    let sig_key = value(text, "CONFIG_MODULE_SIG_KEY").map(|v| v.trim_matches('"'));
    if in_tree && sig_key == Some(SESSION_KEY) {
        // The kernel signs during modules_install with the session key.
    } else if sig_key == Some("") {
        check_reserved_area(text, cert_len)?;
    } else if sig_key != Some(SESSION_CERT) {
        return Err(format!(
            "CONFIG_MODULE_SIG_KEY is {}, neither the session certificate \"{SESSION_CERT}\" nor \"\" (no key, the certificate inserted after the build): the kernel would trust another key than the one its modules are signed with",
            sig_key
                .map(|k| format!("\"{k}\""))
                .unwrap_or_else(|| "unset".into())
        ));
    }
    if value(text, "CONFIG_MODULE_SIG_ALL") == Some("y") && sig_key != Some(SESSION_KEY) {
        return Err(
            "CONFIG_MODULE_SIG_ALL=y makes `modules_install` sign with a private key the build does not have; set it to n (composer signs every module itself), or build with --sign-in-tree and CONFIG_MODULE_SIG_KEY=\"/signing/keys/signing_key.pem\""
                .into(),
        );
    }
    // Kernels before 5.11 have no key type choice: RSA only.
    let has_choice = text.contains("CONFIG_MODULE_SIG_KEY_TYPE_");
    if value(text, type_opt) != Some("y") && (has_choice || !key.is_rsa()) {
        let hint = if key.is_rsa() {
            "build with the default ECDSA key, or set it"
        } else {
            "build with --signing-key-type rsa, or set it (kernels >= 5.15 support ECDSA module keys)"
        };
        return Err(format!(
            "the session key is {} but {type_opt} is not set, so the kernel could not use the certificate: {hint}",
            key.describe()
        ));
    }
    if value(text, hash_opt) != Some("y") {
        return Err(format!(
            "module signatures use {hash} but {hash_opt} is not built in (=y): the kernel could not check them"
        ));
    }
    Ok(())
}

/// A kernel compiled with no key trusts the session's certificate only once
/// it is written into the area `CONFIG_SYSTEM_EXTRA_CERTIFICATE` reserves,
/// which must hold it.
fn check_reserved_area(text: &str, cert_len: usize) -> Result<(), String> {
    if value(text, "CONFIG_SYSTEM_EXTRA_CERTIFICATE") != Some("y") {
        return Err(
            "CONFIG_MODULE_SIG_KEY is \"\" (no key at compile time) but CONFIG_SYSTEM_EXTRA_CERTIFICATE is not set: the kernel would trust no key; set it (the session's certificate is then written into the built kernel) or set CONFIG_MODULE_SIG_KEY to the session certificate"
                .into(),
        );
    }
    let size = value(text, "CONFIG_SYSTEM_EXTRA_CERTIFICATE_SIZE")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(4096);
    if size < cert_len {
        return Err(format!(
            "CONFIG_SYSTEM_EXTRA_CERTIFICATE_SIZE is {size} bytes, but the session's certificate is {cert_len}: raise it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY=\"/signing/certs/signing_key.x509\"\n# CONFIG_MODULE_SIG_ALL is not set\nCONFIG_MODULE_SIG_KEY_TYPE_ECDSA=y\nCONFIG_CRYPTO_SHA512=y\n";

    #[test]
    fn kernel_config_must_match_the_session_key() {
        assert_eq!(check_text(GOOD, KeyType::EcdsaP384, false, 600), Ok(()));
        let rsa = GOOD.replace(
            "CONFIG_MODULE_SIG_KEY_TYPE_ECDSA=y",
            "CONFIG_MODULE_SIG_KEY_TYPE_RSA=y",
        );
        assert!(
            check_text(&rsa, KeyType::EcdsaP384, false, 600)
                .unwrap_err()
                .contains("ECDSA P-384")
        );
        let own = GOOD.replace("/signing/certs/signing_key.x509", "certs/signing_key.pem");
        assert!(
            check_text(&own, KeyType::EcdsaP384, false, 600)
                .unwrap_err()
                .contains("\"certs/signing_key.pem\"")
        );
        let all = GOOD.replace(
            "# CONFIG_MODULE_SIG_ALL is not set",
            "CONFIG_MODULE_SIG_ALL=y",
        );
        assert!(
            check_text(&all, KeyType::EcdsaP384, false, 600)
                .unwrap_err()
                .contains("MODULE_SIG_ALL")
        );
        let nohash = GOOD.replace("CONFIG_CRYPTO_SHA512=y", "CONFIG_CRYPTO_SHA512=m");
        assert!(
            check_text(&nohash, KeyType::EcdsaP384, false, 600)
                .unwrap_err()
                .contains("sha384")
        );
    }
}

#[cfg(test)]
mod in_tree_tests {
    use super::*;

    #[test]
    fn in_tree_mode_accepts_the_session_key_path_with_sig_all() {
        let text = "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY=\"/signing/keys/signing_key.pem\"\nCONFIG_MODULE_SIG_ALL=y\nCONFIG_MODULE_SIG_KEY_TYPE_ECDSA=y\nCONFIG_CRYPTO_SHA512=y\n";
        assert_eq!(check_text(text, KeyType::EcdsaP384, true, 600), Ok(()));
        assert!(check_text(text, KeyType::EcdsaP384, false, 600).is_err());
    }
}

#[cfg(test)]
mod keyless_tests {
    use super::*;

    const KEYLESS: &str = "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY=\"\"\n# CONFIG_MODULE_SIG_ALL is not set\nCONFIG_SYSTEM_EXTRA_CERTIFICATE=y\nCONFIG_SYSTEM_EXTRA_CERTIFICATE_SIZE=4096\nCONFIG_MODULE_SIG_KEY_TYPE_ECDSA=y\nCONFIG_CRYPTO_SHA512=y\n";

    #[test]
    fn a_kernel_compiled_with_no_key_needs_a_reserved_area_that_holds_the_certificate() {
        assert_eq!(check_text(KEYLESS, KeyType::EcdsaP384, false, 600), Ok(()));
        let none = KEYLESS.replace(
            "CONFIG_SYSTEM_EXTRA_CERTIFICATE=y",
            "# CONFIG_SYSTEM_EXTRA_CERTIFICATE is not set",
        );
        assert!(
            check_text(&none, KeyType::EcdsaP384, false, 600)
                .unwrap_err()
                .contains("would trust no key")
        );
        let small = KEYLESS.replace("SIZE=4096", "SIZE=512");
        assert!(
            check_text(&small, KeyType::EcdsaP384, false, 600)
                .unwrap_err()
                .contains("512 bytes, but the session's certificate is 600")
        );
    }
}
