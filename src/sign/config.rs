//! Checks a kernel configuration against the signing session before the
//! kernel compiles: the kernel must trust the session's certificate, accept
//! its key type and have its hash built in, and must not try to sign
//! modules itself (the session's private key is not in the build).
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
/// kernel may sign during `modules_install` with the session key.
pub fn check(root: &Path, key: KeyType, in_tree: bool) -> Result<(), String> {
    for path in kernel_configs(root) {
        let text = fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        check_text(&text, key, in_tree).map_err(|e| format!("/{shown}: {e}"))?;
    }
    Ok(())
}

fn value<'t>(text: &'t str, option: &str) -> Option<&'t str> {
    let prefix = format!("{option}=");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

/// Checks one config's text.
pub fn check_text(text: &str, key: KeyType, in_tree: bool) -> Result<(), String> {
    let (type_opt, hash, hash_opt) = kconfig(key);
    let sig_key = value(text, "CONFIG_MODULE_SIG_KEY").map(|v| v.trim_matches('"'));
    if in_tree && sig_key == Some(SESSION_KEY) {
        // The kernel signs during modules_install with the session key.
    } else if sig_key != Some(SESSION_CERT) {
        return Err(format!(
            "CONFIG_MODULE_SIG_KEY is {}, not the session certificate \"{SESSION_CERT}\": the kernel would trust another key than the one its modules are signed with",
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY=\"/signing/certs/signing_key.x509\"\n# CONFIG_MODULE_SIG_ALL is not set\nCONFIG_MODULE_SIG_KEY_TYPE_ECDSA=y\nCONFIG_CRYPTO_SHA512=y\n";

    #[test]
    fn kernel_config_must_match_the_session_key() {
        assert_eq!(check_text(GOOD, KeyType::EcdsaP384, false), Ok(()));
        let rsa = GOOD.replace(
            "CONFIG_MODULE_SIG_KEY_TYPE_ECDSA=y",
            "CONFIG_MODULE_SIG_KEY_TYPE_RSA=y",
        );
        assert!(
            check_text(&rsa, KeyType::EcdsaP384, false)
                .unwrap_err()
                .contains("ECDSA P-384")
        );
        let own = GOOD.replace("/signing/certs/signing_key.x509", "certs/signing_key.pem");
        assert!(
            check_text(&own, KeyType::EcdsaP384, false)
                .unwrap_err()
                .contains("\"certs/signing_key.pem\"")
        );
        let all = GOOD.replace(
            "# CONFIG_MODULE_SIG_ALL is not set",
            "CONFIG_MODULE_SIG_ALL=y",
        );
        assert!(
            check_text(&all, KeyType::EcdsaP384, false)
                .unwrap_err()
                .contains("MODULE_SIG_ALL")
        );
        let nohash = GOOD.replace("CONFIG_CRYPTO_SHA512=y", "CONFIG_CRYPTO_SHA512=m");
        assert!(
            check_text(&nohash, KeyType::EcdsaP384, false)
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
        assert_eq!(check_text(text, KeyType::EcdsaP384, true), Ok(()));
        assert!(check_text(text, KeyType::EcdsaP384, false).is_err());
    }
}
