//! A signing session: an ephemeral ECDSA P-384 key pair made in memory and
//! a self-signed X.509 certificate for it (`rcgen`), which the kernel built
//! in the session embeds as its only module-signing key.
//!
//! Invariants: the private key exists only in this process's memory (its
//! PKCS#8 form is zeroized when the session is dropped) and is never written
//! anywhere; only the certificate leaves this module. The session id is the
//! sha256 of the certificate's DER, so it names exactly one key.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
#[error("cannot create the session key: {0}")]
pub struct SessionError(String);

/// One session's key and certificate.
pub struct Session {
    /// PKCS#8 DER of the private key; zeroized on drop.
    key_der: Zeroizing<Vec<u8>>,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl Session {
    /// Makes a new key pair and its certificate.
    pub fn start() -> Result<Session, SessionError> {
        let err = |e: rcgen::Error| SessionError(e.to_string());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "composer");
        dn.push(DnType::CommonName, "composer ephemeral module signing key");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = false;
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Session {
            key_der: Zeroizing::new(key.serialize_der()),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        })
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

    /// Whether the session holds a private key (always, until signing
    /// lands: kept so the key's lifetime is the session's).
    pub fn has_key(&self) -> bool {
        !self.key_der.is_empty()
    }
}
