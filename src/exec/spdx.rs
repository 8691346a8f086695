//! SPDX 2.3 JSON documents: the part of the specification's model composer
//! writes (document, creation info, packages with checksums and external
//! references, relationships, extracted licensing information), as serde
//! structs of composer's own.
//!
//! Why not a crate: the one SPDX document crate on crates.io (`spdx-rs`)
//! models SPDX 2.2, has not been released since 2023 and makes random
//! document namespaces; the fields written here are few. License
//! expressions are checked with the `spdx` crate when definitions load
//! (`defs::sbom`).
//!
//! Invariants: [`Document::to_bytes`] is a pure function of the document —
//! objects are written with their keys sorted, lists in the order given,
//! pretty-printed with a final newline — and the `documentNamespace` it
//! writes is derived from everything else in the document, so the same
//! content always gives the same bytes and different content a different
//! namespace.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// `NOASSERTION`: the document makes no claim about the field.
pub const NOASSERTION: &str = "NOASSERTION";

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    pub spdx_version: String,
    pub data_license: String,
    pub name: String,
    /// Filled by [`Document::to_bytes`].
    pub document_namespace: String,
    pub creation_info: CreationInfo,
    pub packages: Vec<Package>,
    pub relationships: Vec<Relationship>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub has_extracted_licensing_infos: Vec<ExtractedLicense>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationInfo {
    /// `YYYY-MM-DDThh:mm:ssZ`.
    pub created: String,
    /// `Tool: NAME-VERSION`, `Organization: …` or `Person: …`.
    pub creators: Vec<String>,
    /// The SPDX license list the expressions were checked against (`M.N`).
    pub license_list_version: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Package {
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supplier: Option<String>,
    /// A URL, or [`NOASSERTION`].
    pub download_location: String,
    pub files_analyzed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<Checksum>,
    pub license_concluded: String,
    pub license_declared: String,
    pub copyright_text: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<ExternalRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_package_purpose: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_info: Option<String>,
}

impl Package {
    /// A package about which nothing is asserted but its id and name.
    pub fn new(spdx_id: String, name: String) -> Package {
        Package {
            spdx_id,
            name,
            version_info: None,
            supplier: None,
            download_location: NOASSERTION.into(),
            files_analyzed: false,
            checksums: Vec::new(),
            license_concluded: NOASSERTION.into(),
            license_declared: NOASSERTION.into(),
            copyright_text: NOASSERTION.into(),
            external_refs: Vec::new(),
            primary_package_purpose: None,
            source_info: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    /// `SHA256`, `SHA512`, …
    pub algorithm: String,
    /// Lower-case hex.
    pub checksum_value: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRef {
    /// `SECURITY`, `PACKAGE-MANAGER`, …
    pub reference_category: String,
    /// `cpe23Type`, `purl`, …
    pub reference_type: String,
    pub reference_locator: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Relationship {
    pub spdx_element_id: String,
    pub relationship_type: String,
    pub related_spdx_element: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtractedLicense {
    /// `LicenseRef-…`.
    pub license_id: String,
    pub extracted_text: String,
    pub name: String,
}

impl Document {
    /// The document's bytes, with its namespace `urn:uuid:<UUIDv5>` named
    /// after the digest of the rest of the document.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut doc = self.clone();
        doc.document_namespace = String::new();
        let digest = hex::encode(Sha256::digest(pretty(&doc)));
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, digest.as_bytes());
        doc.document_namespace = format!("urn:uuid:{id}");
        pretty(&doc)
    }
}

/// Pretty JSON with sorted keys and a final newline. Going through
/// `serde_json::Value`, whose maps are ordered by key, sorts them.
fn pretty(doc: &Document) -> Vec<u8> {
    let value = serde_json::to_value(doc).expect("a document is plain strings, lists and maps");
    let mut out = serde_json::to_vec_pretty(&value).expect("writing JSON to memory does not fail");
    out.push(b'\n');
    out
}

/// `SPDXRef-<prefix>-<name>` with every character SPDX ids do not allow
/// replaced by `-`.
pub fn spdx_id(prefix: &str, name: &str) -> String {
    format!("SPDXRef-{prefix}-{}", crate::defs::sbom::idstring(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str) -> Document {
        Document {
            spdx_id: "SPDXRef-DOCUMENT".into(),
            spdx_version: "SPDX-2.3".into(),
            data_license: "CC0-1.0".into(),
            name: name.into(),
            document_namespace: String::new(),
            creation_info: CreationInfo {
                created: "1970-01-01T00:00:00Z".into(),
                creators: vec!["Tool: test".into()],
                license_list_version: "3.29".into(),
            },
            packages: vec![Package::new(spdx_id("Package", name), name.into())],
            relationships: Vec::new(),
            has_extracted_licensing_infos: Vec::new(),
        }
    }

    #[test]
    fn bytes_have_sorted_keys_and_a_namespace_from_the_content() {
        let a = String::from_utf8(doc("a").to_bytes()).unwrap();
        assert_eq!(a, String::from_utf8(doc("a").to_bytes()).unwrap());
        let keys: Vec<&str> = a
            .lines()
            .filter(|l| l.starts_with("  \""))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(a.ends_with("}\n"));
        let ns = |s: &str| {
            let v: serde_json::Value = serde_json::from_str(s).unwrap();
            v["documentNamespace"].as_str().unwrap().to_string()
        };
        let b = String::from_utf8(doc("b").to_bytes()).unwrap();
        assert!(ns(&a).starts_with("urn:uuid:"), "{}", ns(&a));
        assert_ne!(ns(&a), ns(&b));
    }

    #[test]
    fn spdx_ids_keep_only_allowed_characters() {
        assert_eq!(
            spdx_id("Package", "hello_pcie 1"),
            "SPDXRef-Package-hello-pcie-1"
        );
    }
}
