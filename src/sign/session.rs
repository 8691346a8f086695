//! A signing session: an ephemeral ECDSA P-384 key pair made in memory and
//! a self-signed X.509 certificate for it (`rcgen`), which the kernel built
//! in the session embeds as its only module-signing key.
//!
//! Invariants: the private key exists only in this process's memory (its
//! PKCS#8 form is zeroized when the session is dropped; `ring`'s working
//! copy made for each signature, which it does not zeroize, lives only
//! for that signature) and is never
//! written anywhere; only the certificate and signatures leave this module.
//! The session id is the sha256 of the certificate's DER, so it names
//! exactly one key.

use der::Decode;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use super::kmod::{self, Algorithm, SigError};
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
    cert: Certificate,
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
        let parsed = Certificate::from_der(cert.der()).map_err(|e| SessionError(e.to_string()))?;
        Ok(Session {
            key_der: Zeroizing::new(key.serialize_der()),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            cert: parsed,
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

    /// Byte patterns that would betray the private key if found anywhere
    /// (its PKCS#8 DER and its raw scalar), for audits that scan build
    /// outputs, caches and logs. Never write these anywhere.
    #[doc(hidden)]
    pub fn secret_patterns_for_audit(&self) -> Vec<Zeroizing<Vec<u8>>> {
        let der = &self.key_der[..];
        let mut out = vec![Zeroizing::new(der.to_vec())];
        // ECPrivateKey inside PKCS#8: INTEGER 1, then OCTET STRING (48).
        if let Some(i) = der
            .windows(5)
            .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x30])
            && der.len() >= i + 5 + 48
        {
            out.push(Zeroizing::new(der[i + 5..i + 5 + 48].to_vec()));
        }
        out
    }

    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// A module's bytes with any old signature replaced by the session's.
    pub fn sign_module(&self, module: &[u8]) -> Result<Vec<u8>, SigError> {
        let content = kmod::unsigned_content(module)?;
        let rng = SystemRandom::new();
        // ring's key pair does not zeroize itself: keep it for this one
        // signature only.
        let signature = {
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &self.key_der, &rng)
                    .map_err(|e| SigError::Cms(format!("session key: {e}")))?;
            pair.sign(&rng, content)
                .map_err(|_| SigError::Cms("signing failed".into()))?
        };
        let block =
            kmod::signature_block(&self.cert, Algorithm::EcdsaP384Sha384, signature.as_ref())?;
        let mut out = Vec::with_capacity(content.len() + block.len());
        out.extend_from_slice(content);
        out.extend_from_slice(&block);
        Ok(out)
    }
}
