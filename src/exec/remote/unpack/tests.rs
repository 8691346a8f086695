//! Tests of the cache-entry unpacker: a packed tree comes back with the
//! digest and size `fsops` computes from the disk, and every hostile layer
//! (paths leaving the tree, entries through a symlink, twice or before
//! their directory, stray links, devices, bytes that differ from the
//! descriptor) is refused.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use oci_spec::image::{Descriptor, DescriptorBuilder, MediaType};
use sha2::{Digest, Sha256};

use super::unpack_layer;
use crate::exec::fsops::{tree_digest, tree_size};
use crate::oci::layer::{Compression, write_dir};
use crate::oci::layout::Layout;

/// A tree with what a kernel build leaves: nested and read-only
/// directories, odd modes, a file of several chunks, relative and long
/// symlinks, a hard link, a name that is not ASCII, names whose order
/// differs part by part and byte by byte.
fn tricky_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("ro")).unwrap();
    fs::write(root.join("a.c"), "x").unwrap();
    fs::write(root.join("a/b/c/empty"), "").unwrap();
    fs::write(root.join("a/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("a/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("a/secret-mode"), "y").unwrap();
    fs::set_permissions(
        root.join("a/secret-mode"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let big: Vec<u8> = (0..(1u32 << 20) + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    fs::write(root.join("a/b/vmlinux"), &big).unwrap();
    fs::hard_link(root.join("a/b/vmlinux"), root.join("a/vmlinux.link")).unwrap();
    symlink("../.././x", root.join("a/b/up")).unwrap();
    symlink("d/".repeat(70), root.join("a/long")).unwrap();
    fs::write(root.join("café"), "utf-8").unwrap();
    fs::write(root.join("ro/inside"), "z").unwrap();
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
}

fn layer_of(tree: &Path, layout_dir: &Path) -> (Layout, Descriptor) {
    let layout = Layout::create(layout_dir).unwrap();
    let layer = write_dir(&layout, tree, Compression::Zstd, 0).unwrap();
    (layout, layer.descriptor)
}

#[test]
fn an_unpacked_tree_has_the_digest_and_size_of_the_tree_that_was_packed() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    tricky_tree(&src);
    let (layout, desc) = layer_of(&src, &t.path().join("layout"));
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    let mode = fs::metadata(&src).unwrap().mode() & 0o7777;
    let got = unpack_layer(&layout, &desc, &out, Some(mode)).unwrap();
    assert_eq!(got.digest, tree_digest(&src).unwrap());
    assert_eq!(
        got.digest,
        tree_digest(&out).unwrap(),
        "the digest is the disk's"
    );
    assert_eq!(got.size, tree_size(&out));
    let link = fs::metadata(out.join("a/vmlinux.link")).unwrap();
    assert_eq!(
        link.ino(),
        fs::metadata(out.join("a/b/vmlinux")).unwrap().ino()
    );
    assert_eq!(link.mtime(), 0, "files get the layer's mtime");
    assert_eq!(
        fs::read_link(out.join("a/b/up")).unwrap(),
        Path::new("../.././x")
    );
}

#[test]
fn a_changed_root_mode_changes_the_digest() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "1").unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    let (layout, desc) = layer_of(&src, &t.path().join("layout"));
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    let got = unpack_layer(&layout, &desc, &out, Some(0o700)).unwrap();
    assert_ne!(got.digest, tree_digest(&src).unwrap());
    assert_eq!(got.digest, tree_digest(&out).unwrap());
}

/// One raw tar entry: the name is written byte for byte (the tar crate
/// refuses `..` and absolute names when building).
fn raw(kind: tar::EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn dir(name: &str) -> Vec<u8> {
    raw(tar::EntryType::Directory, name.as_bytes(), b"", b"")
}

fn file(name: &str) -> Vec<u8> {
    raw(tar::EntryType::Regular, name.as_bytes(), b"", b"data")
}

/// A zstd tar layer of `entries`.
fn zstd_tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut tar = entries.concat();
    tar.extend_from_slice(&[0; 1024]);
    zstd::encode_all(&tar[..], 3).unwrap()
}

/// Unpacks a layer made of `entries`, described by its own digest.
fn unpack_entries(entries: &[Vec<u8>]) -> (tempfile::TempDir, Result<super::Unpacked, String>) {
    let blob = zstd_tar(entries);
    let t = tempfile::tempdir().unwrap();
    let layout = Layout::create(&t.path().join("layout")).unwrap();
    layout.write_blob(&blob).unwrap();
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    let r = unpack_layer(&layout, &descriptor(&blob), &out, None);
    (t, r)
}

fn descriptor(blob: &[u8]) -> Descriptor {
    DescriptorBuilder::default()
        .media_type(MediaType::ImageLayerZstd)
        .digest(
            format!("sha256:{}", hex::encode(Sha256::digest(blob)))
                .parse::<oci_spec::image::Digest>()
                .unwrap(),
        )
        .size(blob.len() as u64)
        .build()
        .unwrap()
}

fn refused(entries: &[Vec<u8>], why: &str) -> tempfile::TempDir {
    let (t, r) = unpack_entries(entries);
    let e = r.expect_err("a hostile layer is refused");
    assert!(e.contains(why), "{e}");
    t
}

#[test]
fn a_layer_of_plain_entries_unpacks() {
    let (t, r) = unpack_entries(&[dir("d/"), file("d/f")]);
    r.unwrap();
    assert_eq!(fs::read(t.path().join("out/d/f")).unwrap(), b"data");
}

#[test]
fn an_entry_that_leaves_the_tree_is_refused() {
    let t = refused(&[file("../escaped")], "leaves the entry's tree");
    assert!(!t.path().join("escaped").exists());
    refused(&[file("/etc/composer-x")], "is an absolute path");
    assert!(!Path::new("/etc/composer-x").exists());
}

#[test]
fn an_entry_through_a_symlink_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().display().to_string();
    let link = raw(tar::EntryType::Symlink, b"l", outside.as_bytes(), b"");
    refused(
        &[link, file("l/planted")],
        "is not under a directory of the layer",
    );
    assert!(!t.path().join("planted").exists());
}

#[test]
fn an_entry_twice_or_before_its_directory_is_refused() {
    refused(&[file("f"), file("f")], "appears twice");
    refused(&[file("d/f")], "is not under a directory of the layer");
}

#[test]
fn links_and_devices_a_cache_entry_cannot_hold_are_refused() {
    let hard = raw(tar::EntryType::Link, b"h", b"missing", b"");
    refused(&[hard], "not a file written before it");
    let to_dir = raw(tar::EntryType::Link, b"h", b"d", b"");
    refused(&[dir("d/"), to_dir], "not a file written before it");
    let dev = raw(tar::EntryType::Char, b"null", b"", b"");
    refused(&[dev], "directories, files and links only");
}

#[test]
fn a_layer_whose_bytes_differ_from_its_digest_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let layout = Layout::create(&t.path().join("layout")).unwrap();
    let good = zstd_tar(&[dir("d/"), file("d/f")]);
    let desc = descriptor(&good);
    // Another sound layer where this one's blob should be: it unpacks,
    // and its digest (or size) gives it away at its end.
    let other = zstd_tar(&[dir("e/"), file("e/g")]);
    let blob = layout.blob_path(desc.digest());
    fs::write(&blob, &other).unwrap();
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    let e = unpack_layer(&layout, &desc, &out, None).unwrap_err();
    assert!(
        e.contains("content has digest") || e.contains("descriptor says"),
        "{e}"
    );
    // Truncated.
    fs::write(&blob, &good[..good.len() / 2]).unwrap();
    let out2 = t.path().join("out2");
    fs::create_dir(&out2).unwrap();
    assert!(unpack_layer(&layout, &desc, &out2, None).is_err());
}
