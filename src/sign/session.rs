//! A signing session: the key pair a kernel and its modules share, and a
//! self-signed X.509 certificate for it (`rcgen`), which the kernel built
//! in the session embeds as its only module-signing key.
//!
//! Keys: ephemeral ECDSA P-384 (default; `ring`, ~1 ms) or ephemeral
//! RSA-4096 (`rsa` generates it, seconds; for kernels older than 5.15 or a
//! policy that demands RSA), or a key the user brings (`from_pem`: PKCS#8
//! private key and its certificate, e.g. a kernel tree's signing_key.pem),
//! which is then not ephemeral.
//!
//! Invariants: the private key exists only in this process's memory (its
//! PKCS#8 form is zeroized when the session is dropped; `ring`'s working
//! copy made for each signature, which it does not zeroize, lives only for
//! that signature) and is never written anywhere; only the certificate and
//! signatures leave this module. The session id is the sha256 of the
//! certificate's DER, so it names exactly one key.

use der::{Decode, Encode};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256,
};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    RSA_PKCS1_SHA256, RSA_PKCS1_SHA512, RsaKeyPair,
};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::kmod::{self, Algorithm, SigError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot create the session key: {0}")]
    Generate(String),
    #[error("{path}: {message}")]
    Key { path: String, message: String },
}

/// What kind of key a session uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP384,
    EcdsaP256,
    /// RSA with SHA-256 signatures.
    Rsa,
    /// RSA with SHA-512 signatures.
    RsaSha512,
}

impl KeyType {
    pub fn describe(self) -> &'static str {
        match self {
            KeyType::EcdsaP384 => "ECDSA P-384/SHA-384",
            KeyType::EcdsaP256 => "ECDSA P-256/SHA-256",
            KeyType::Rsa => "RSA/SHA-256",
            KeyType::RsaSha512 => "RSA/SHA-512",
        }
    }

    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyType::EcdsaP384 => Algorithm::EcdsaP384Sha384,
            KeyType::EcdsaP256 => Algorithm::EcdsaP256Sha256,
            KeyType::Rsa => Algorithm::RsaSha256,
            KeyType::RsaSha512 => Algorithm::RsaSha512,
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa | KeyType::RsaSha512)
    }
}

/// One session's key and certificate.
pub struct Session {
    /// PKCS#8 DER of the private key; zeroized on drop.
    key_der: Zeroizing<Vec<u8>>,
    key_type: KeyType,
    ephemeral: bool,
    cert_der: Vec<u8>,
    cert_pem: String,
    cert: Certificate,
}

impl Session {
    /// Makes a new ECDSA P-384 key pair and its certificate.
    pub fn start() -> Result<Session, SessionError> {
        Self::generate(KeyType::EcdsaP384, 0)
    }

    /// Makes a new key of `key_type` (`rsa_bits` for RSA) and its
    /// certificate.
    pub fn generate(key_type: KeyType, rsa_bits: usize) -> Result<Session, SessionError> {
        let err = |e: String| SessionError::Generate(e);
        let pkcs8: Zeroizing<Vec<u8>> = match key_type {
            KeyType::EcdsaP384 | KeyType::EcdsaP256 => {
                let alg = if key_type == KeyType::EcdsaP384 {
                    &ECDSA_P384_SHA384_ASN1_SIGNING
                } else {
                    &ECDSA_P256_SHA256_ASN1_SIGNING
                };
                let doc = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new())
                    .map_err(|e| err(e.to_string()))?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            KeyType::Rsa | KeyType::RsaSha512 => {
                use rsa::pkcs8::EncodePrivateKey;
                let bits = if rsa_bits == 0 { 4096 } else { rsa_bits };
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
                    .map_err(|e| err(e.to_string()))?;
                let doc = key.to_pkcs8_der().map_err(|e| err(e.to_string()))?;
                Zeroizing::new(doc.as_bytes().to_vec())
            }
        };
        let (cert_der, cert_pem) = self_signed(&pkcs8, key_type).map_err(err)?;
        Self::assemble(pkcs8, key_type, true, cert_der, cert_pem).map_err(err)
    }

    /// A session with a key the user keeps: a PEM file holding a PKCS#8
    /// `PRIVATE KEY` and its `CERTIFICATE` (a kernel tree's
    /// `certs/signing_key.pem` has this shape). Not ephemeral.
    pub fn from_pem(path: &std::path::Path) -> Result<Session, SessionError> {
        let shown = path.display().to_string();
        let err = |message: String| SessionError::Key {
            path: shown.clone(),
            message,
        };
        let text = Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
        let text = std::str::from_utf8(&text).map_err(|_| err("not a PEM file".into()))?;
        let mut key: Option<Zeroizing<Vec<u8>>> = None;
        let mut cert: Option<Vec<u8>> = None;
        for block in text.split("-----BEGIN ").skip(1) {
            let label = block.split("-----").next().unwrap_or_default();
            let pem = format!("-----BEGIN {block}");
            let end = pem
                .find("-----END ")
                .and_then(|i| pem[i..].find("\n").map(|j| i + j));
            let pem = &pem[..end.unwrap_or(pem.len())];
            match label {
                "PRIVATE KEY" => {
                    let (_, der) = der::pem::decode_vec(pem.as_bytes())
                        .map_err(|e| err(format!("private key: {e}")))?;
                    key = Some(Zeroizing::new(der));
                }
                "CERTIFICATE" => {
                    let (_, der) = der::pem::decode_vec(pem.as_bytes())
                        .map_err(|e| err(format!("certificate: {e}")))?;
                    cert = Some(der);
                }
                "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                    return Err(err(format!(
                        "the key is a `{label}`; convert it to unencrypted PKCS#8: openssl pkcs8 -topk8 -nocrypt -in KEY"
                    )));
                }
                _ => {}
            }
        }
        let key = key.ok_or_else(|| err("no `PRIVATE KEY` block".into()))?;
        let cert_der = cert.ok_or_else(|| err("no `CERTIFICATE` block".into()))?;
        let key_type = detect(&key).ok_or_else(|| {
            err("the private key is neither ECDSA P-256/P-384 nor RSA 2048-8192".into())
        })?;
        let parsed = Certificate::from_der(&cert_der).map_err(|e| err(e.to_string()))?;
        let cert_key = parsed
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            .to_vec();
        if public_key(&key, key_type).as_deref() != Some(&cert_key[..]) {
            return Err(err("the certificate is not the private key's".into()));
        }
        let cert_pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &cert_der)
            .map_err(|e| err(e.to_string()))?;
        Self::assemble(key, key_type, false, cert_der, cert_pem).map_err(err)
    }

    fn assemble(
        key_der: Zeroizing<Vec<u8>>,
        key_type: KeyType,
        ephemeral: bool,
        cert_der: Vec<u8>,
        cert_pem: String,
    ) -> Result<Session, String> {
        let cert = Certificate::from_der(&cert_der).map_err(|e| e.to_string())?;
        Ok(Session {
            key_der,
            key_type,
            ephemeral,
            cert_der,
            cert_pem,
            cert,
        })
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// False for a key the user brought.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// The certificate as PEM (what the kernel's `extract-cert` reads).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// sha256 of the certificate's DER, hex.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    /// Byte patterns that would betray the private key if found anywhere
    /// (its PKCS#8 DER and, for ECDSA, its raw scalar), for audits that
    /// scan build outputs, caches and logs. Never write these anywhere.
    #[doc(hidden)]
    pub fn secret_patterns_for_audit(&self) -> Vec<Zeroizing<Vec<u8>>> {
        let der = &self.key_der[..];
        let mut out = vec![Zeroizing::new(der.to_vec())];
        // ECPrivateKey inside PKCS#8: INTEGER 1, then OCTET STRING (48/32).
        for len in [0x30u8, 0x20] {
            if let Some(i) = der
                .windows(5)
                .position(|w| w == [0x02, 0x01, 0x01, 0x04, len])
                && der.len() >= i + 5 + len as usize
            {
                out.push(Zeroizing::new(der[i + 5..i + 5 + len as usize].to_vec()));
            }
        }
        out
    }

    /// The private key (PKCS#8 PEM) followed by the certificate: the
    /// `signing_key.pem` a kernel tree signs with during `modules_install`.
    /// Only for `--sign-in-tree`, which hands it to session stages on a
    /// tmpfs; zeroized when dropped.
    pub fn combined_pem(&self) -> Result<Zeroizing<Vec<u8>>, SigError> {
        let key = der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, &self.key_der)
            .map_err(|e| SigError::Cms(e.to_string()))?;
        let mut out = Zeroizing::new(key.into_bytes());
        out.extend_from_slice(self.cert_pem.as_bytes());
        Ok(out)
    }

    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// A module's bytes with any old signature replaced by the session's.
    pub fn sign_module(&self, module: &[u8]) -> Result<Vec<u8>, SigError> {
        let content = kmod::unsigned_content(module)?;
        let signature = self.raw_sign(content)?;
        let block = kmod::signature_block(&self.cert, self.key_type.algorithm(), &signature)?;
        let mut out = Vec::with_capacity(content.len() + block.len());
        out.extend_from_slice(content);
        out.extend_from_slice(&block);
        Ok(out)
    }

    /// The raw signature over `content`. ring's key pairs do not zeroize
    /// themselves: each lives for this one signature.
    fn raw_sign(&self, content: &[u8]) -> Result<Vec<u8>, SigError> {
        let rng = SystemRandom::new();
        let key_err = |e: String| SigError::Cms(format!("session key: {e}"));
        match self.key_type {
            KeyType::EcdsaP384 | KeyType::EcdsaP256 => {
                let alg = if self.key_type == KeyType::EcdsaP384 {
                    &ECDSA_P384_SHA384_ASN1_SIGNING
                } else {
                    &ECDSA_P256_SHA256_ASN1_SIGNING
                };
                let pair = EcdsaKeyPair::from_pkcs8(alg, &self.key_der, &rng)
                    .map_err(|e| key_err(e.to_string()))?;
                let sig = pair
                    .sign(&rng, content)
                    .map_err(|_| key_err("signing failed".into()))?;
                Ok(sig.as_ref().to_vec())
            }
            KeyType::Rsa | KeyType::RsaSha512 => {
                let pair =
                    RsaKeyPair::from_pkcs8(&self.key_der).map_err(|e| key_err(e.to_string()))?;
                let mut sig = vec![0u8; pair.public().modulus_len()];
                let padding = if self.key_type == KeyType::Rsa {
                    &RSA_PKCS1_SHA256
                } else {
                    &RSA_PKCS1_SHA512
                };
                pair.sign(padding, &rng, content, &mut sig)
                    .map_err(|_| key_err("signing failed".into()))?;
                Ok(sig)
            }
        }
    }
}

/// The key type of a PKCS#8 private key, if ring can use it.
fn detect(pkcs8: &[u8]) -> Option<KeyType> {
    let rng = SystemRandom::new();
    if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8, &rng).is_ok() {
        Some(KeyType::EcdsaP384)
    } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng).is_ok() {
        Some(KeyType::EcdsaP256)
    } else if RsaKeyPair::from_pkcs8(pkcs8).is_ok() {
        Some(KeyType::Rsa)
    } else {
        None
    }
}

/// The public key as it appears in a certificate's SubjectPublicKeyInfo.
fn public_key(pkcs8: &[u8], key_type: KeyType) -> Option<Vec<u8>> {
    let rng = SystemRandom::new();
    match key_type {
        KeyType::EcdsaP384 => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8, &rng)
                .ok()
                .map(|p| p.public_key().as_ref().to_vec())
        }
        KeyType::EcdsaP256 => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
                .ok()
                .map(|p| p.public_key().as_ref().to_vec())
        }
        KeyType::Rsa | KeyType::RsaSha512 => RsaKeyPair::from_pkcs8(pkcs8)
            .ok()
            .map(|p| p.public_key().as_ref().to_vec()),
    }
}

/// A self-signed certificate for the key: DER and PEM.
fn self_signed(pkcs8: &Zeroizing<Vec<u8>>, key_type: KeyType) -> Result<(Vec<u8>, String), String> {
    let alg = if key_type.is_rsa() {
        &PKCS_RSA_SHA256
    } else {
        &PKCS_ECDSA_P384_SHA384
    };
    let alg = if key_type == KeyType::EcdsaP256 {
        &rcgen::PKCS_ECDSA_P256_SHA256
    } else {
        alg
    };
    let key_der = rustls_pki_types_der(pkcs8);
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&key_der, alg).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "composer");
    dn.push(DnType::CommonName, "composer ephemeral module signing key");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = cert.der().to_vec();
    // Round-trip through x509-cert: the DER the kernel will parse.
    let parsed = Certificate::from_der(&der).map_err(|e| e.to_string())?;
    let der = parsed.to_der().map_err(|e| e.to_string())?;
    Ok((der, cert.pem()))
}

fn rustls_pki_types_der(pkcs8: &[u8]) -> rustls_pki_types::PrivatePkcs8KeyDer<'_> {
    rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8)
}
