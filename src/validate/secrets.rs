//! `no-secrets`: no private-key material anywhere in the tree.
//!
//! Every regular file's contents are scanned (not its name), streaming in
//! 64 KiB chunks with an overlap, so a multi-gigabyte file is never read
//! whole and a match across a chunk boundary is still found:
//!
//! - PEM private keys of every kind: `-----BEGIN <...>PRIVATE KEY-----`
//!   (PKCS#8, ENCRYPTED, RSA, EC, DSA, OPENSSH, ...) followed by a line
//!   break (or a literal `\n`, as in a JSON string), optional
//!   `Proc-Type:`/`DEK-Info:` headers, and base64. Requiring the body
//!   keeps a script that merely greps for the marker from being a finding.
//! - The exact byte strings the context carries (a signing session's
//!   PKCS#8 key and raw scalar, `Session::secret_patterns_for_audit`).
//!   Messages never show the bytes.
//! - DER private keys as whole files: every file of at most 64 KiB that is
//!   one DER SEQUENCE is checked for the shape of a PKCS#8
//!   `PrivateKeyInfo`, an `EncryptedPrivateKeyInfo` (PBES1/PBES2/PKCS#12
//!   PBE), a SEC1 `ECPrivateKey`, a PKCS#1 `RSAPrivateKey` or a DSA key.
//!   That covers `*.pem`, `*.key` and `signing_key*` whatever their name;
//!   certificates and public keys do not have these shapes.
//!
//! Invariant: one finding per file and kind of hit (the first offset), so
//! a file full of keys does not flood the report.

use std::io::{self, Read};
use std::path::PathBuf;

use memchr::memmem;
use rayon::prelude::*;

use super::{Context, Kind, Rule, Severity, Sink, Tree, walk};

const CHUNK: usize = 1 << 16;
/// Bytes after the start of a PEM marker needed to decide on it.
const PEM_WINDOW: usize = 1024;
/// Files up to this size get the whole-file DER check.
const DER_MAX: u64 = 1 << 16;
const BEGIN: &[u8] = b"-----BEGIN ";

/// What a scan found in one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Hit {
    Pem { label: String, offset: u64 },
    Pattern { offset: u64 },
    Der { kind: &'static str },
}

impl Hit {
    fn message(&self) -> String {
        match self {
            Hit::Pem { label, offset } => {
                format!("PEM private key `-----BEGIN {label}-----` at byte {offset}")
            }
            Hit::Pattern { offset } => {
                format!("bytes of a signing key that must never leave composer, at byte {offset}")
            }
            Hit::Der { kind } => format!("the file is a DER {kind}"),
        }
    }
}

/// Scans a stream for PEM private keys and the exact `patterns`; `chunk`
/// is the read size (small in tests, to cross boundaries).
pub fn scan<R: Read>(mut reader: R, patterns: &[&[u8]], chunk: usize) -> io::Result<Vec<Hit>> {
    let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
    let keep = PEM_WINDOW.max(longest);
    let chunk = chunk.max(1);
    let mut buf: Vec<u8> = Vec::with_capacity(chunk + keep);
    let mut tmp = vec![0u8; chunk];
    let mut base = 0u64;
    let mut eof = false;
    let mut pem: Option<Hit> = None;
    let mut pattern: Option<Hit> = None;
    let patterns: Vec<&[u8]> = patterns.iter().copied().filter(|p| !p.is_empty()).collect();
    loop {
        while !eof && buf.len() < chunk + keep {
            match reader.read(&mut tmp) {
                Ok(0) => eof = true,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Matches starting before `decided` are judged now; the rest of
        // the buffer is kept for the next round.
        let decided = if eof { buf.len() } else { buf.len() - keep };
        if pem.is_none() {
            for at in memmem::find_iter(&buf, BEGIN) {
                if at >= decided {
                    break;
                }
                if let Some(label) = pem_private_key(&buf[at..]) {
                    pem = Some(Hit::Pem {
                        label,
                        offset: base + at as u64,
                    });
                    break;
                }
            }
        }
        if pattern.is_none() {
            let first = patterns
                .iter()
                .filter_map(|p| {
                    let end = buf.len().min(decided + p.len().saturating_sub(1));
                    memmem::find(&buf[..end], p)
                })
                .min();
            if let Some(at) = first {
                pattern = Some(Hit::Pattern {
                    offset: base + at as u64,
                });
            }
        }
        let done = pem.is_some() && (pattern.is_some() || patterns.is_empty());
        if eof || done {
            break;
        }
        buf.drain(..decided);
        base += decided as u64;
    }
    Ok(pem.into_iter().chain(pattern).collect())
}

/// The label when `text` (starting at `-----BEGIN `) opens a PEM private
/// key with a body.
fn pem_private_key(text: &[u8]) -> Option<String> {
    let rest = text.strip_prefix(BEGIN)?;
    let end = memmem::find(&rest[..rest.len().min(80)], b"-----")?;
    let label = &rest[..end];
    if !label.ends_with(b"PRIVATE KEY")
        || !label
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b' ')
    {
        return None;
    }
    let mut body = &rest[end + 5..];
    // Up to a few header lines (RFC 1421 `Proc-Type:`, `DEK-Info:`) and a
    // blank line before the base64.
    for _ in 0..6 {
        body = line_break(body)?;
        let line_end = body
            .iter()
            .position(|b| matches!(b, b'\n' | b'\r' | b'\\'))
            .unwrap_or(body.len());
        let line = &body[..line_end];
        if line.is_empty() || line.contains(&b':') {
            body = &body[line_end..];
            continue;
        }
        let b64 = line
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            .count();
        return (b64 >= 16).then(|| String::from_utf8_lossy(label).into_owned());
    }
    None
}

/// The text after one line break: `\n`, `\r\n`, or an escaped `\n`/`\r\n`.
fn line_break(s: &[u8]) -> Option<&[u8]> {
    for sep in [&b"\r\n"[..], b"\n", b"\\r\\n", b"\\n"] {
        if let Some(rest) = s.strip_prefix(sep) {
            return Some(rest);
        }
    }
    None
}

/// One DER TLV: (tag, contents, rest). Definite lengths up to 4 bytes.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &x| (l << 8) | x as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The items of a constructed value, if it parses to the end.
fn items(mut b: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (tag, content, rest) = tlv(b)?;
        out.push((tag, content));
        b = rest;
    }
    Some(out)
}

const INTEGER: u8 = 0x02;
const OCTETS: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
/// 1.2.840.113549.1.5 (PKCS#5 PBES1/PBES2) and 1.2.840.113549.1.12.1
/// (PKCS#12 PBE), DER contents.
const PBE_OIDS: &[&[u8]] = &[
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05],
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01],
];

/// What kind of DER private key `file` is, if it is one as a whole.
pub fn der_private_key(file: &[u8]) -> Option<&'static str> {
    let (tag, content, rest) = tlv(file)?;
    if tag != SEQUENCE || !rest.is_empty() {
        return None;
    }
    let it = items(content)?;
    let small_int = |(tag, c): (u8, &[u8]), v: u8| tag == INTEGER && c == [v];
    match it.as_slice() {
        [v, (SEQUENCE, alg), (OCTETS, _), ..]
            if (small_int(*v, 0) || small_int(*v, 1))
                && items(alg).is_some_and(|a| a.first().is_some_and(|(t, _)| *t == OID)) =>
        {
            Some("PKCS#8 private key")
        }
        [(SEQUENCE, alg), (OCTETS, _)]
            if items(alg).is_some_and(|a| {
                a.first().is_some_and(|(t, oid)| {
                    *t == OID && PBE_OIDS.iter().any(|p| oid.starts_with(p))
                })
            }) =>
        {
            Some("encrypted PKCS#8 private key")
        }
        [v, (OCTETS, key), rest @ ..]
            if small_int(*v, 1)
                && (20..=66).contains(&key.len())
                && rest.len() <= 2
                && rest.iter().all(|(t, _)| matches!(t, 0xa0 | 0xa1)) =>
        {
            Some("SEC1 EC private key")
        }
        all @ [first, ..]
            if all.iter().all(|(t, _)| *t == INTEGER)
                && (small_int(*first, 0) || small_int(*first, 1))
                && (all.len() >= 9 || all.len() == 6) =>
        {
            Some(if all.len() == 6 {
                "DSA private key"
            } else {
                "PKCS#1 RSA private key"
            })
        }
        _ => None,
    }
}

pub struct NoSecrets;

impl Rule for NoSecrets {
    fn name(&self) -> &'static str {
        "no-secrets"
    }

    fn description(&self) -> &'static str {
        "no private keys in any file: PEM blocks, DER keys, the signing session's key bytes"
    }

    fn severity(&self) -> Severity {
        Severity::Error
    }

    fn applies_to(&self) -> &'static [Kind] {
        &Kind::ALL
    }

    fn check(&self, tree: &Tree<'_>, ctx: &Context, out: &mut Sink) {
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in walk(tree.root) {
            match entry {
                Ok(e) if e.file_type().is_file() => files.push(e.into_path()),
                Ok(_) => {}
                Err(err) => out.unreadable(tree, &err),
            }
        }
        let patterns: Vec<&[u8]> = ctx.secret_patterns.iter().map(|p| p.as_slice()).collect();
        let results: Vec<(PathBuf, io::Result<Vec<Hit>>)> = files
            .into_par_iter()
            .map(|path| {
                let hits = scan_file(&path, &patterns);
                (path, hits)
            })
            .collect();
        for (path, hits) in results {
            let shown = tree.display(&path);
            match hits {
                Ok(hits) => {
                    for h in hits {
                        out.push(shown.clone(), h.message());
                    }
                }
                Err(e) => out.push(shown, format!("cannot read: {e}")),
            }
        }
    }
}

/// Scans one file; a file of at most [`DER_MAX`] bytes also gets the DER
/// check. The size is learnt by reading, not from metadata, so a file that
/// grows or lies about its size is still scanned to its end.
fn scan_file(path: &std::path::Path, patterns: &[&[u8]]) -> io::Result<Vec<Hit>> {
    let mut file = std::fs::File::open(path)?;
    let mut head = Vec::new();
    file.by_ref().take(DER_MAX + 1).read_to_end(&mut head)?;
    if head.len() as u64 > DER_MAX {
        return scan(io::Cursor::new(head).chain(file), patterns, CHUNK);
    }
    let mut hits = scan(&head[..], patterns, CHUNK)?;
    if let Some(kind) = der_private_key(&head) {
        hits.push(Hit::Der { kind });
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49\n-----END EC PRIVATE KEY-----\n";

    #[test]
    fn pem_key_found_across_chunk_boundaries() {
        let mut data = vec![b'x'; 5000];
        data.extend_from_slice(PEM.as_bytes());
        data.extend(vec![b'y'; 3000]);
        for chunk in [1, 7, 64, 4999, 5003, 1 << 16] {
            let hits = scan(&data[..], &[], chunk).unwrap();
            assert_eq!(
                hits,
                vec![Hit::Pem {
                    label: "EC PRIVATE KEY".into(),
                    offset: 5000
                }],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn pem_marker_without_body_is_not_a_key() {
        let script = b"grep -q -- '-----BEGIN PRIVATE KEY-----' \"$f\" && echo key\n";
        assert!(scan(&script[..], &[], CHUNK).unwrap().is_empty());
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIBszCCATqgAwIBAgIUEx\n";
        assert!(scan(&cert[..], &[], CHUNK).unwrap().is_empty());
    }

    #[test]
    fn pem_kinds_headers_and_escaped_newlines() {
        for text in [
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\r\nMIIFHDBOBgkqhkiG9w0BBQ0w\r\n",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,AB\n\nMIIEpAIBAAKCAQEAx1234567\n",
            "{\"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0\\n\"}",
        ] {
            assert_eq!(
                scan(text.as_bytes(), &[], CHUNK).unwrap().len(),
                1,
                "{text}"
            );
        }
    }

    #[test]
    fn exact_patterns_found_across_boundaries() {
        let secret: Vec<u8> = (0..48u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let mut data = vec![0u8; 100_000];
        data[70_000..70_048].copy_from_slice(&secret);
        for chunk in [13, 4096, 69_999, 1 << 16] {
            let hits = scan(&data[..], &[&secret], chunk).unwrap();
            assert_eq!(hits, vec![Hit::Pattern { offset: 70_000 }], "chunk {chunk}");
        }
    }

    #[test]
    fn der_shapes_of_private_keys_and_not_of_certificates() {
        let s = crate::sign::Session::start().unwrap();
        let pkcs8 = s.secret_patterns_for_audit()[0].to_vec();
        assert_eq!(der_private_key(&pkcs8), Some("PKCS#8 private key"));
        assert_eq!(der_private_key(s.cert_der()), None);
        let mut trailing = pkcs8.clone();
        trailing.push(0);
        assert_eq!(der_private_key(&trailing), None);
        // ECPrivateKey: version 1, a 32-byte key, [0] curve.
        let mut sec1 = vec![0x30, 0x00, 0x02, 0x01, 0x01, 0x04, 0x20];
        sec1.extend([7u8; 32]);
        sec1.extend([0xa0, 0x03, 0x06, 0x01, 0x2a]);
        sec1[1] = (sec1.len() - 2) as u8;
        assert_eq!(der_private_key(&sec1), Some("SEC1 EC private key"));
        assert_eq!(der_private_key(b""), None);
        assert_eq!(der_private_key(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
