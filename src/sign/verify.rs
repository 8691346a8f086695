//! Cryptographic verification of module signatures against trusted
//! certificates, as the kernel does it: the signer is found by issuer and
//! serial number (or subject key identifier), the signature is checked
//! over the module's content with the signer's public key.
//!
//! Invariant: `Ok` means the signature verified with `ring` against one of
//! the given certificates; every other outcome is a `SigError` naming why.

use der::{Decode, Encode};
use ring::signature::{self as sig, UnparsedPublicKey};
use x509_cert::Certificate;

use super::kmod::{
    self, OID_ECDSA_SHA256, OID_ECDSA_SHA384, OID_ECDSA_SHA512, OID_RSA, OID_SHA256, OID_SHA384,
    OID_SHA512, SigError,
};

const OID_P256: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_SKID: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.29.14");

/// A certificate trusted to sign modules.
#[derive(Clone, Debug)]
pub struct Trusted {
    pub cert: Certificate,
    issuer_der: Vec<u8>,
    serial: Vec<u8>,
    skid: Option<Vec<u8>>,
}

impl Trusted {
    pub fn from_der(der_bytes: &[u8]) -> Result<Trusted, String> {
        let cert = Certificate::from_der(der_bytes).map_err(|e| e.to_string())?;
        Ok(Self::new(cert))
    }

    pub fn new(cert: Certificate) -> Trusted {
        let tbs = &cert.tbs_certificate;
        let issuer_der = tbs.issuer.to_der().unwrap_or_default();
        let serial = tbs.serial_number.as_bytes().to_vec();
        let skid = tbs.extensions.as_ref().and_then(|exts| {
            exts.iter()
                .find(|e| e.extn_id == OID_SKID)
                .and_then(|e| der::asn1::OctetString::from_der(e.extn_value.as_bytes()).ok())
                .map(|o| o.as_bytes().to_vec())
        });
        Trusted {
            cert,
            issuer_der,
            serial,
            skid,
        }
    }

    /// The certificate's DER encoding.
    pub fn der(&self) -> Result<Vec<u8>, String> {
        self.cert.to_der().map_err(|e| e.to_string())
    }

    /// The subject's common name or the whole subject, for messages.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    /// Certificates from a file: PEM (one or more `CERTIFICATE` blocks)
    /// or one DER certificate. The error names the file.
    pub fn read_file(path: &std::path::Path) -> Result<Vec<Trusted>, String> {
        let shown = path.display();
        let bytes = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
        let bad = |e: String| format!("{shown}: not an X.509 certificate: {e}");
        if bytes.starts_with(b"-----BEGIN") {
            let certs = Certificate::load_pem_chain(&bytes).map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no CERTIFICATE block".into()));
            }
            Ok(certs.into_iter().map(Trusted::new).collect())
        } else {
            Ok(vec![Trusted::from_der(&bytes).map_err(bad)?])
        }
    }

    /// The certificates built into a kernel image (bzImage, Image,
    /// Image.gz): what that kernel trusts for modules. An image with none
    /// is an error, since it trusts no module key.
    pub fn read_kernel(path: &std::path::Path) -> Result<Vec<Trusted>, String> {
        let shown = path.display();
        let image = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
        let code = super::kernel_image::kernel_code(&image).map_err(|e| format!("{shown}: {e}"))?;
        let certs = super::kernel_image::certificates(&code);
        if certs.is_empty() {
            return Err(format!(
                "{shown}: no certificates built in: this kernel trusts no module key"
            ));
        }
        Ok(certs.into_iter().map(|(c, _)| Trusted::new(c)).collect())
    }
}

/// What a good signature was made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Index into the trusted certificates.
    pub signer: usize,
    pub hash: &'static str,
    pub algorithm: &'static str,
}

/// Verifies a module's bytes against `trusted`.
pub fn verify(bytes: &[u8], trusted: &[Trusted]) -> Result<Verified, SigError> {
    if bytes.is_empty() {
        return Err(SigError::NotElf("the file is empty"));
    }
    if !bytes.starts_with(b"\x7fELF") {
        return Err(SigError::NotElf("no ELF header"));
    }
    let split = kmod::split(bytes)?;
    let cms = split.cms.ok_or(SigError::Unsigned)?;
    let parsed = kmod::parse_cms(cms)?;
    let signer = &parsed.signer;
    let idx = match &signer.sid {
        cms::signed_data::SignerIdentifier::IssuerAndSerialNumber(ias) => {
            let issuer = ias
                .issuer
                .to_der()
                .map_err(|e| SigError::Cms(e.to_string()))?;
            let serial = ias.serial_number.as_bytes();
            trusted
                .iter()
                .position(|t| t.issuer_der == issuer && t.serial == serial)
                .ok_or_else(|| SigError::UnknownSigner {
                    issuer: ias.issuer.to_string(),
                    serial: hex::encode(serial),
                })?
        }
        cms::signed_data::SignerIdentifier::SubjectKeyIdentifier(skid) => {
            let id = skid.0.as_bytes();
            trusted
                .iter()
                .position(|t| t.skid.as_deref() == Some(id))
                .ok_or(SigError::UnknownKeyId)?
        }
    };
    let cert = &trusted[idx].cert;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let key = spki.subject_public_key.raw_bytes();
    let sig_oid = signer.signature_algorithm.oid;
    let hash = match parsed.digest {
        d if d == OID_SHA256 => "sha256",
        d if d == OID_SHA384 => "sha384",
        d if d == OID_SHA512 => "sha512",
        d => return Err(SigError::Digest(d.to_string())),
    };
    let (alg, algorithm): (&'static dyn sig::VerificationAlgorithm, &'static str) =
        if [OID_ECDSA_SHA256, OID_ECDSA_SHA384, OID_ECDSA_SHA512].contains(&sig_oid) {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok());
            match (curve, hash) {
                (Some(c), "sha256") if c == OID_P256 => {
                    (&sig::ECDSA_P256_SHA256_ASN1, "ecdsa-p256")
                }
                (Some(c), "sha384") if c == OID_P256 => {
                    (&sig::ECDSA_P256_SHA384_ASN1, "ecdsa-p256")
                }
                (Some(c), "sha256") if c == OID_P384 => {
                    (&sig::ECDSA_P384_SHA256_ASN1, "ecdsa-p384")
                }
                (Some(c), "sha384") if c == OID_P384 => {
                    (&sig::ECDSA_P384_SHA384_ASN1, "ecdsa-p384")
                }
                _ => {
                    return Err(SigError::Algorithm(format!(
                        "{sig_oid} with {hash} on this curve"
                    )));
                }
            }
        } else if sig_oid == OID_RSA {
            match hash {
                "sha256" => (&sig::RSA_PKCS1_2048_8192_SHA256, "rsa"),
                "sha384" => (&sig::RSA_PKCS1_2048_8192_SHA384, "rsa"),
                _ => (&sig::RSA_PKCS1_2048_8192_SHA512, "rsa"),
            }
        } else {
            return Err(SigError::Algorithm(sig_oid.to_string()));
        };
    UnparsedPublicKey::new(alg, key)
        .verify(split.content, signer.signature.as_bytes())
        .map_err(|_| SigError::BadSignature)?;
    Ok(Verified {
        signer: idx,
        hash,
        algorithm,
    })
}
