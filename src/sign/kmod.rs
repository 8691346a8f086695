//! The kernel module signature: what the kernel's `scripts/sign-file`
//! appends to a `.ko`, written and checked natively.
//!
//! Layout of a signed module (byte-compatible with sign-file):
//! ```text
//! <module ELF> <CMS ContentInfo, DER> <struct module_signature: 12 bytes>
//! "~Module signature appended~\n"
//! struct module_signature { u8 algo=0, hash=0, id_type=2 (PKCS#7),
//!                           signer_len=0, key_id_len=0, pad[3]=0,
//!                           __be32 sig_len }
//! ```
//! The CMS is SignedData, detached (no content), with no certificates and
//! no signed attributes, one SignerInfo identified by issuer and serial
//! number, digest algorithm the hash, signature algorithm
//! `ecdsa-with-SHA*` or `rsaEncryption` (not `sha*WithRSAEncryption`,
//! which kernel 6.1 rejects). Without signed attributes the signature is
//! over the module's bytes directly.
//!
//! Written by hand because no crate does this trailer; the ASN.1 structures
//! come from `cms`/`x509-cert`/`der`, the cryptography from `ring`. The
//! `cms` builder always adds signed attributes, so SignedData is assembled
//! here from its types.
//!
//! Invariants: parsing never panics on any input (every length is checked
//! before it is used); a module is "signed" only if its signature verifies
//! cryptographically against a given certificate.

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use x509_cert::Certificate;
use x509_cert::spki::AlgorithmIdentifierOwned;

/// The magic string at the very end of a signed module.
pub const MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`.
pub const TRAILER_LEN: usize = 12;
const PKEY_ID_PKCS7: u8 = 2;

pub const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
pub const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
pub const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
pub const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
pub const OID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
pub const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
pub const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
pub const OID_ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");

/// Why a module's signature is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("not signed (no `~Module signature appended~` marker)")]
    Unsigned,
    #[error("signature trailer is truncated")]
    Truncated,
    #[error("signature trailer is not PKCS#7 (id_type {0}, expected 2)")]
    IdType(u8),
    #[error("signature length {sig_len} runs past the start of the file ({size} bytes)")]
    SigLen { sig_len: u64, size: u64 },
    #[error("signature is not valid CMS: {0}")]
    Cms(String),
    #[error("CMS has {0} signers; a module signature has exactly one")]
    Signers(usize),
    #[error("CMS has signed attributes; the kernel's module signatures have none")]
    SignedAttributes,
    #[error("CMS content is not detached")]
    NotDetached,
    #[error("unsupported digest algorithm {0}")]
    Digest(String),
    #[error("unsupported signature algorithm {0} (RSA signatures must use rsaEncryption)")]
    Algorithm(String),
    #[error("signed by a key that is not trusted (issuer {issuer}, serial {serial})")]
    UnknownSigner { issuer: String, serial: String },
    #[error("signer identified by subject key id, which no trusted certificate has")]
    UnknownKeyId,
    #[error("signature does not verify: the module was changed after signing, or the key differs")]
    BadSignature,
    #[error("not a kernel module: {0}")]
    NotElf(&'static str),
}

/// A module split into its content and its parsed signature.
pub struct Split<'a> {
    pub content: &'a [u8],
    pub cms: Option<&'a [u8]>,
}

/// Splits a module into content and CMS. An unsigned module has `cms:
/// None`; a damaged trailer is an error.
pub fn split(bytes: &[u8]) -> Result<Split<'_>, SigError> {
    let Some(rest) = bytes.strip_suffix(MAGIC) else {
        return Ok(Split {
            content: bytes,
            cms: None,
        });
    };
    if rest.len() < TRAILER_LEN {
        return Err(SigError::Truncated);
    }
    let (body, trailer) = rest.split_at(rest.len() - TRAILER_LEN);
    if trailer[2] != PKEY_ID_PKCS7 {
        return Err(SigError::IdType(trailer[2]));
    }
    let sig_len = u32::from_be_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]) as usize;
    if sig_len == 0 || sig_len > body.len() {
        return Err(SigError::SigLen {
            sig_len: sig_len as u64,
            size: bytes.len() as u64,
        });
    }
    let (content, cms) = body.split_at(body.len() - sig_len);
    Ok(Split {
        content,
        cms: Some(cms),
    })
}

/// The module without any signature (for re-signing).
pub fn unsigned_content(bytes: &[u8]) -> Result<&[u8], SigError> {
    split(bytes).map(|s| s.content)
}

/// A signature algorithm composer produces and checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP384Sha384,
    EcdsaP256Sha256,
    RsaSha256,
    RsaSha512,
}

impl Algorithm {
    fn digest_oid(self) -> ObjectIdentifier {
        match self {
            Algorithm::EcdsaP384Sha384 => OID_SHA384,
            Algorithm::EcdsaP256Sha256 | Algorithm::RsaSha256 => OID_SHA256,
            Algorithm::RsaSha512 => OID_SHA512,
        }
    }

    fn signature_alg(self) -> AlgorithmIdentifierOwned {
        match self {
            Algorithm::EcdsaP384Sha384 => AlgorithmIdentifierOwned {
                oid: OID_ECDSA_SHA384,
                parameters: None,
            },
            Algorithm::EcdsaP256Sha256 => AlgorithmIdentifierOwned {
                oid: OID_ECDSA_SHA256,
                parameters: None,
            },
            Algorithm::RsaSha256 | Algorithm::RsaSha512 => AlgorithmIdentifierOwned {
                oid: OID_RSA,
                parameters: Some(Any::from(der::asn1::Null)),
            },
        }
    }
}

/// Wraps a raw signature over `content` into the appended form: CMS,
/// trailer, magic. `cert` names the signer.
pub fn signature_block(
    cert: &Certificate,
    algorithm: Algorithm,
    signature: &[u8],
) -> Result<Vec<u8>, SigError> {
    let err = |e: der::Error| SigError::Cms(e.to_string());
    let digest_alg = AlgorithmIdentifierOwned {
        oid: algorithm.digest_oid(),
        parameters: None,
    };
    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: cert.tbs_certificate.issuer.clone(),
            serial_number: cert.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: digest_alg.clone(),
        signed_attrs: None,
        signature_algorithm: algorithm.signature_alg(),
        signature: OctetString::new(signature).map_err(err)?,
        unsigned_attrs: None,
    };
    let mut digests = SetOfVec::new();
    digests.insert(digest_alg).map_err(err)?;
    let mut signers = SetOfVec::new();
    signers.insert(signer).map_err(err)?;
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: digests,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: OID_DATA,
            econtent: None,
        },
        certificates: None,
        crls: None,
        signer_infos: SignerInfos(signers),
    };
    let ci = ContentInfo {
        content_type: OID_SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(err)?,
    };
    let mut out = ci.to_der().map_err(err)?;
    let sig_len =
        u32::try_from(out.len()).map_err(|_| SigError::Cms("signature too large".into()))?;
    let mut trailer = [0u8; TRAILER_LEN];
    trailer[2] = PKEY_ID_PKCS7;
    trailer[8..].copy_from_slice(&sig_len.to_be_bytes());
    out.extend_from_slice(&trailer);
    out.extend_from_slice(MAGIC);
    Ok(out)
}

/// The parsed signer of a module's CMS.
pub struct Parsed {
    pub signer: SignerInfo,
    pub digest: ObjectIdentifier,
}

/// Parses a module signature's CMS and checks its shape.
pub fn parse_cms(cms_der: &[u8]) -> Result<Parsed, SigError> {
    let err = |e: der::Error| SigError::Cms(e.to_string());
    let ci = ContentInfo::from_der(cms_der).map_err(err)?;
    if ci.content_type != OID_SIGNED_DATA {
        return Err(SigError::Cms(format!(
            "content type {} is not signedData",
            ci.content_type
        )));
    }
    let sd: SignedData = ci.content.decode_as().map_err(err)?;
    if sd.encap_content_info.econtent.is_some() {
        return Err(SigError::NotDetached);
    }
    let n = sd.signer_infos.0.len();
    if n != 1 {
        return Err(SigError::Signers(n));
    }
    let signer = sd
        .signer_infos
        .0
        .into_vec()
        .pop()
        .ok_or(SigError::Signers(0))?;
    if signer.signed_attrs.is_some() {
        return Err(SigError::SignedAttributes);
    }
    let digest = signer.digest_alg.oid;
    if ![OID_SHA256, OID_SHA384, OID_SHA512].contains(&digest) {
        return Err(SigError::Digest(digest.to_string()));
    }
    Ok(Parsed { signer, digest })
}
