//! Cache keys of stages, and the reasons a key changed.
//!
//! A stage's key is the sha256 of its [`Fingerprint`]: named parts, each a
//! short value or a digest. What goes in, and what never does:
//!
//! | part                         | in the key | why                                   |
//! |------------------------------|------------|---------------------------------------|
//! | cache format, platform       | yes        | outputs differ per platform            |
//! | variant, shell, base         | yes        | the filesystem steps run on            |
//! | step env, scripts, network,  | yes        | what runs and how                      |
//! | cachePaths, sources' digests |            | (URLs are not: a mirror is the same)   |
//! | finalize                     | yes        | what the output holds                  |
//! | SBOM documents (digests)     | yes        | what `sbom:` steps write, composer's   |
//! |                              |            | version among it (`sbom.rs`)           |
//! | files under /pkg (content)   | yes        | rendered `*.tmpl` included             |
//! | dependency keys, from → to   | yes        | a changed input changes the output     |
//! | sandbox settings             | yes        | the sandbox's own version              |
//! | SOURCE_DATE_EPOCH            | yes        | output timestamps                      |
//! | mtimes, absolute paths, user | never      | a checkout moved or touched is the same|
//! | the signing session          | no         | sessions are matched as a whole, see   |
//! |                              |            | `cache.rs`                             |
//!
//! The parts are stored with each cache entry and per stage name, so a miss
//! can be explained part by part ("env KERNEL_CONFIG changed"), as cargo's
//! fingerprints do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever the layout or meaning of cache entries changes.
pub const FORMAT: &str = "composer-cache-1";

/// The named inputs of a stage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub parts: BTreeMap<String, String>,
}

impl Fingerprint {
    /// Adds a part; long or multi-line values are kept as their digest.
    pub fn add(&mut self, name: impl Into<String>, value: impl AsRef<str>) {
        let v = value.as_ref();
        let v = if v.len() > 96 || v.contains('\n') {
            format!("sha256:{}", hex::encode(Sha256::digest(v.as_bytes())))
        } else {
            v.to_string()
        };
        self.parts.insert(name.into(), v);
    }

    /// The key: hex sha256 over the format and every part, in name order.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(FORMAT.as_bytes());
        h.update([0]);
        for (k, v) in &self.parts {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    /// What changed from `old` to `self`, one phrase per part.
    pub fn reasons(&self, old: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.parts {
            match old.parts.get(k) {
                None => out.push(format!("{k} added")),
                Some(o) if o != v => {
                    if v.starts_with("sha256:") || o.starts_with("sha256:") {
                        out.push(format!("{k} changed"));
                    } else {
                        out.push(format!("{k} changed ({o} → {v})"));
                    }
                }
                Some(_) => {}
            }
        }
        for k in old.parts.keys() {
            if !self.parts.contains_key(k) {
                out.push(format!("{k} removed"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ignores_insertion_order_and_reasons_name_parts() {
        let mut a = Fingerprint::default();
        a.add("env ARCH", "x86");
        a.add("step 1 build[0] script", "make\nmake install");
        let mut b = Fingerprint::default();
        b.add("step 1 build[0] script", "make\nmake install");
        b.add("env ARCH", "x86");
        assert_eq!(a.key(), b.key());
        b.add("env ARCH", "arm64");
        b.add("env CC", "gcc");
        assert_ne!(a.key(), b.key());
        assert_eq!(
            b.reasons(&a),
            vec!["env ARCH changed (x86 → arm64)", "env CC added"]
        );
        assert_eq!(
            a.reasons(&b),
            vec!["env ARCH changed (arm64 → x86)", "env CC removed"]
        );
    }
}
