//! The certificates a kernel image trusts for modules, read from the image
//! itself: a bzImage's compressed payload (gzip, xz, zstd or lz4, the
//! legacy lz4 format `lz4 -l` writes and Debian's kernels use) is unpacked
//! and scanned for X.509 certificates, which is where the kernel keeps its
//! built-in keys (`system_certificates`). An uncompressed image (arm64's
//! `Image`) or a gzip-compressed one (`Image.gz`) is scanned directly.
//!
//! Invariant: only byte ranges that parse as a whole X.509 certificate
//! (x509-cert) are returned, each once, in image order.

use std::io::Read;

use der::Decode;
use x509_cert::Certificate;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Format(String),
    #[error("decompressing the kernel payload: {0}")]
    Decompress(String),
}

/// Decompressed kernel code (vmlinux or Image) of a kernel image file.
pub fn kernel_code(image: &[u8]) -> Result<Vec<u8>, ImageError> {
    if image.len() > 0x250 && &image[0x202..0x206] == b"HdrS" {
        let u32le = |at: usize| {
            u32::from_le_bytes([image[at], image[at + 1], image[at + 2], image[at + 3]]) as usize
        };
        let setup_sects = match image[0x1f1] {
            0 => 4,
            n => n as usize,
        };
        let start = (setup_sects + 1) * 512 + u32le(0x248);
        let end = start.saturating_add(u32le(0x24c));
        let payload = image
            .get(start..end)
            .ok_or_else(|| ImageError::Format("bzImage payload lies outside the file".into()))?;
        return decompress(payload);
    }
    if image.starts_with(&[0x1f, 0x8b]) {
        return decompress(image);
    }
    Ok(image.to_vec())
}

fn decompress(payload: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let err = |e: std::io::Error| ImageError::Decompress(e.to_string());
    if payload.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .map_err(err)?;
    } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        // The kernel appends the uncompressed size (4 bytes) after the
        // stream; liblzma would read it as a damaged second stream.
        let mut stream = xz2::stream::Stream::new_stream_decoder(u64::MAX, 0)
            .map_err(|e| ImageError::Decompress(e.to_string()))?;
        out.reserve(unpacked_size_hint(payload));
        loop {
            let consumed = stream.total_in() as usize;
            let status = stream
                .process_vec(&payload[consumed..], &mut out, xz2::stream::Action::Run)
                .map_err(|e| ImageError::Decompress(e.to_string()))?;
            if status == xz2::stream::Status::StreamEnd {
                break;
            }
            if out.len() == out.capacity() {
                out.reserve(out.len());
            } else if stream.total_in() as usize == payload.len() {
                return Err(ImageError::Decompress("truncated xz stream".into()));
            }
        }
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut d = zstd::Decoder::new(payload).map_err(err)?.single_frame();
        d.read_to_end(&mut out).map_err(err)?;
    } else if payload.starts_with(&LZ4_LEGACY_MAGIC) {
        out = lz4_legacy(payload)?;
    } else {
        return Err(ImageError::Format(
            "the kernel payload is not gzip, xz, zstd or lz4 (lzma, lzo and bzip2 kernels are not supported)"
                .into(),
        ));
    }
    Ok(out)
}

/// The size the kernel's build appends to a compressed payload (u32,
/// little-endian), so the output is allocated once; only a hint (capped,
/// and at least 4× the payload) since the stream itself decides.
fn unpacked_size_hint(payload: &[u8]) -> usize {
    const CAP: usize = 1 << 30;
    let appended = payload
        .len()
        .checked_sub(4)
        .and_then(|at| payload.get(at..))
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    appended.max(payload.len() * 4).min(CAP)
}

/// The legacy lz4 format's magic (0x184C2102, little-endian).
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// What one block of the legacy format decompresses to at most.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// A legacy lz4 stream (the magic, then blocks each preceded by its
/// compressed size, u32 little-endian; the magic may repeat), as the
/// kernel's `unlz4` reads it; the kernel's build appends the uncompressed
/// size (4 bytes), which ends the stream. Written here: lz4 crates decode
/// the frame format, not this one; each block is decoded by lz4_flex.
fn lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::with_capacity(payload.len() * 3);
    let mut at = LZ4_LEGACY_MAGIC.len();
    while payload.len() - at > 4 {
        let size = u32::from_le_bytes([
            payload[at],
            payload[at + 1],
            payload[at + 2],
            payload[at + 3],
        ]);
        at += 4;
        if size.to_le_bytes() == LZ4_LEGACY_MAGIC {
            continue;
        }
        let block = payload
            .get(at..at + size as usize)
            .ok_or_else(|| ImageError::Decompress("truncated lz4 block".into()))?;
        let part = lz4_flex::block::decompress(block, LZ4_LEGACY_BLOCK)
            .map_err(|e| ImageError::Decompress(format!("lz4: {e}")))?;
        out.extend_from_slice(&part);
        at += size as usize;
    }
    Ok(out)
}

/// Every X.509 certificate in `code`, in order, without duplicates.
pub fn certificates(code: &[u8]) -> Vec<(Certificate, Vec<u8>)> {
    let mut out: Vec<(Certificate, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while i + 8 < code.len() {
        // SEQUENCE (long form, 2 length bytes) holding a SEQUENCE.
        if code[i] == 0x30 && code[i + 1] == 0x82 && code[i + 4] == 0x30 && code[i + 5] == 0x82 {
            let len = 4 + u16::from_be_bytes([code[i + 2], code[i + 3]]) as usize;
            if let Some(der) = code.get(i..i + len)
                && let Ok(cert) = Certificate::from_der(der)
            {
                if !out.iter().any(|(_, d)| d == der) {
                    out.push((cert, der.to_vec()));
                }
                i += len;
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::Session;
    use std::io::Write;

    /// An arm64 `Image` header (64 bytes, "ARM\x64" at 0x38), then code
    /// with `cert` inside, twice.
    fn arm64_image(cert: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 64];
        image[0..4].copy_from_slice(b"MZ\x40\xfa");
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        image.extend_from_slice(&[0x30, 0x82, 0xff]);
        image.extend_from_slice(cert);
        image.extend_from_slice(&[0u8; 100]);
        image.extend_from_slice(cert);
        image.extend_from_slice(&[0x30; 9]);
        image
    }

    #[test]
    fn arm64_image_is_scanned_uncompressed() {
        let s = Session::start().unwrap();
        let image = arm64_image(s.cert_der());
        let code = kernel_code(&image).unwrap();
        assert_eq!(code, image);
        let certs = certificates(&code);
        assert_eq!(certs.len(), 1, "found once");
        assert_eq!(certs[0].1, s.cert_der());
    }

    #[test]
    fn bzimage_payload_is_decompressed_before_scanning() {
        let s = Session::start().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&arm64_image(s.cert_der())).unwrap();
        let payload = gz.finish().unwrap();
        // Boot sector and 4 setup sectors, then the payload at offset 16.
        let mut image = vec![0u8; 5 * 512 + 16];
        image[0x1f1] = 4;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&payload);
        let certs = certificates(&kernel_code(&image).unwrap());
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].1, s.cert_der());

        image.truncate(image.len() - 1);
        assert!(matches!(kernel_code(&image), Err(ImageError::Format(_))));
    }

    /// A legacy lz4 stream as `lz4 -l` and the kernel's build write it:
    /// the magic, blocks of at most 8 MiB each preceded by its compressed
    /// size, the uncompressed size appended.
    fn lz4_legacy_stream(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn an_lz4_payload_in_the_legacy_format_is_decompressed_block_by_block() {
        let s = Session::start().unwrap();
        // More than one block, the certificate in the second.
        let mut code = vec![0x90u8; LZ4_LEGACY_BLOCK + 1000];
        code.extend_from_slice(&arm64_image(s.cert_der()));
        let stream = lz4_legacy_stream(&code);
        assert_eq!(decompress(&stream).unwrap(), code);
        let certs = certificates(&decompress(&stream).unwrap());
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].1, s.cert_der());
        // A block cut short is an error, not a panic.
        let cut = &stream[..stream.len() - 100];
        assert!(matches!(decompress(cut), Err(ImageError::Decompress(_))));
    }
}
