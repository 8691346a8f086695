//! A node for `composer kmod`, which a temporary directory stands for
//! (`--root`): fake `/proc` and `/sys` files (the release, `sig_enforce`,
//! the taint, `/proc/kallsyms`, `/proc/modules`) and a real
//! `/lib/modules/<release>` with an in-tree module, indexed by kmod's
//! depmod; modules compiled by cc with a `.modinfo` and real export
//! tables, signed with an openssl key (openssl cms, as the kernel's
//! sign-file signs); images packed by `composer pack`.
#![allow(dead_code)] // not every test binary uses every helper

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub const R: &str = "6.1.0-57-cloud-amd64";
pub const OTHER: &str = "6.1.0-56-cloud-amd64";

pub fn vermagic(release: &str) -> String {
    format!("{release} SMP mod_unload")
}

/// A module `name` as cc makes it: `exports` exported (`__ksymtab_*`,
/// `__ksymtab_strings`, as depmod and the kernel read them), `uses`
/// called (undefined), `.modinfo` with licence, name, vermagic, depends.
pub fn ko(
    work: &Path,
    name: &str,
    vermagic: &str,
    exports: &[&str],
    uses: &[&str],
    depends: &[&str],
) -> Vec<u8> {
    let mut c = String::new();
    for u in uses {
        c.push_str(&format!("extern int {u}(void);\n"));
    }
    let calls: String = uses.iter().map(|u| format!(" + {u}()")).collect();
    c.push_str(&format!("int init_module(void) {{ return 0{calls}; }}\n"));
    for e in exports {
        c.push_str(&format!(
            "int {e}(void) {{ return 0; }}\nstatic const int __ksymtab_{e} __attribute__((section(\"__ksymtab\"), used)) = 0;\nstatic const char __kstrtab_{e}[] __attribute__((section(\"__ksymtab_strings\"), used, aligned(1))) = \"{e}\";\n"
        ));
    }
    let info = [
        "license=GPL".to_string(),
        format!("name={name}"),
        format!("vermagic={vermagic}"),
        format!("depends={}", depends.join(",")),
    ];
    for (i, entry) in info.iter().enumerate() {
        c.push_str(&format!(
            "static const char m{i}[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"{entry}\";\n"
        ));
    }
    let src = work.join(format!("{name}.c"));
    let obj = work.join(format!("{name}.o"));
    fs::write(&src, c).unwrap();
    super::run(
        Command::new("cc")
            .args(["-c", "-O0"])
            .arg(&src)
            .arg("-o")
            .arg(&obj),
    );
    fs::read(obj).unwrap()
}

/// A key and its certificate, made by openssl.
pub struct Keys {
    pub dir: TempDir,
}

impl Keys {
    pub fn new(cn: &str) -> Keys {
        let dir = tempfile::tempdir().unwrap();
        super::run(
            Command::new("openssl")
                .args([
                    "req", "-new", "-x509", "-nodes", "-days", "30", "-newkey", "rsa:2048",
                ])
                .args([
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    "key.pem",
                    "-out",
                    "cert.pem",
                ])
                .current_dir(dir.path()),
        );
        Keys { dir }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Key and certificate in one PEM, as `composer build --signing-key`
    /// takes them.
    pub fn both(&self) -> PathBuf {
        let p = self.dir.path().join("both.pem");
        let mut b = fs::read(self.dir.path().join("key.pem")).unwrap();
        b.extend(fs::read(self.cert()).unwrap());
        fs::write(&p, b).unwrap();
        p
    }

    /// `module` with a signature appended as sign-file appends it: CMS
    /// (openssl cms: detached, no attributes, no certificates), the
    /// 12-byte trailer, the magic.
    pub fn sign(&self, module: &[u8]) -> Vec<u8> {
        let d = self.dir.path();
        fs::write(d.join("m.ko"), module).unwrap();
        super::run(
            Command::new("openssl")
                .args([
                    "cms", "-sign", "-binary", "-noattr", "-nocerts", "-outform", "DER",
                ])
                .args(["-md", "sha256", "-signer", "cert.pem", "-inkey", "key.pem"])
                .args(["-in", "m.ko", "-out", "m.sig"])
                .current_dir(d),
        );
        let sig = fs::read(d.join("m.sig")).unwrap();
        let mut out = module.to_vec();
        out.extend_from_slice(&sig);
        out.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        out.extend_from_slice(b"~Module signature appended~\n");
        out
    }
}

/// One byte of the compiler's `.comment` flipped: the module still
/// parses, its signature no longer verifies.
pub fn tamper(signed: &[u8]) -> Vec<u8> {
    let at = signed
        .windows(4)
        .position(|w| w == b"GCC:")
        .expect("a .comment");
    let mut out = signed.to_vec();
    out[at + 1] ^= 0x20;
    out
}

/// The node: `<tmp>/root` standing for `/`, and a work directory beside it.
pub struct Node {
    pub dir: TempDir,
}

impl Node {
    /// Running `R`, `sig_enforce` as given; `/lib/modules/R` holds the
    /// in-tree module `intree` (exports `intree_fn`), indexed by depmod;
    /// `/proc/kallsyms` exports `printk`; `/lib/firmware` exists.
    pub fn new(sig_enforce: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let node = Node { dir };
        let intree = ko(
            &node.work(),
            "intree",
            &vermagic(R),
            &["intree_fn"],
            &[],
            &[],
        );
        node.put(
            &format!("lib/modules/{R}/kernel/drivers/misc/intree.ko"),
            &intree,
        );
        node.put("proc/sys/kernel/osrelease", format!("{R}\n").as_bytes());
        node.put("proc/sys/kernel/tainted", b"0\n");
        node.put(
            "proc/kallsyms",
            b"ffffffff81000000 T printk\n0000000000000000 r __ksymtab_printk\n",
        );
        node.put("proc/modules", b"");
        node.put(
            "sys/module/module/parameters/sig_enforce",
            format!("{sig_enforce}\n").as_bytes(),
        );
        node.put("sys/module/firmware_class/parameters/path", b"");
        fs::create_dir_all(node.root().join("lib/firmware")).unwrap();
        super::run(Command::new("depmod").arg("-b").arg(node.root()).arg(R));
        node
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn work(&self) -> PathBuf {
        let w = self.dir.path().join("work");
        fs::create_dir_all(&w).unwrap();
        w
    }

    pub fn put(&self, path: &str, bytes: &[u8]) {
        let p = self.root().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    pub fn read(&self, path: &str) -> String {
        fs::read_to_string(self.root().join(path.trim_start_matches('/'))).unwrap()
    }

    /// Every entry of the node: path → `dir`, `-> target` or the sha256
    /// of the content.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        let root = self.root();
        walkdir::WalkDir::new(&root)
            .follow_links(false)
            .into_iter()
            .map(|e| e.unwrap())
            .map(|e| {
                let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
                let t = e.file_type();
                let what = if t.is_dir() {
                    "dir".to_string()
                } else if t.is_symlink() {
                    format!("-> {}", fs::read_link(e.path()).unwrap().display())
                } else {
                    hex::encode(Sha256::digest(fs::read(e.path()).unwrap()))
                };
                (rel, what)
            })
            .collect()
    }

    /// `composer --root ROOT kmod ARGS...` in the work directory, with
    /// `path` first on PATH when given.
    pub fn kmod_with(&self, path: Option<&Path>, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_composer"));
        cmd.arg("--root").arg(self.root()).arg("kmod").args(args);
        cmd.current_dir(self.work()).env("NO_COLOR", "1");
        if let Some(p) = path {
            let old = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{old}", p.display()));
        }
        let out = cmd.output().unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "{}",
            said(&out)
        );
        out
    }

    pub fn kmod(&self, args: &[&str]) -> Output {
        self.kmod_with(None, args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.kmod(args);
        assert!(o.status.success(), "{args:?}: {}", said(&o));
        said(&o)
    }

    /// `composer pack` of `files` into `oci-archive:<work>/<file>`;
    /// returns the image's digest.
    pub fn image(&self, file: &str, files: &[(String, Vec<u8>)]) -> String {
        let tree = self.work().join(format!("{file}.d"));
        for (p, bytes) in files {
            let p = tree.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
        let dest = format!("oci-archive:{}", self.work().join(file).display());
        let o = super::composer(&self.work(), &["pack", tree.to_str().unwrap(), "-o", &dest]);
        assert!(o.status.success(), "{}", said(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.trim().rsplit('\t').next().unwrap().to_string()
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("var/lib/composer/installed.json")).unwrap()
    }
}

pub fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A refusal: exit 1, `message` said, the node unchanged.
pub fn refused(node: &Node, args: &[&str], message: &str) {
    let before = node.snapshot();
    let o = node.kmod(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", said(&o));
    assert!(
        said(&o).contains(message),
        "{args:?}: wanted {message:?} in:\n{}",
        said(&o)
    );
    assert_eq!(node.snapshot(), before, "{args:?}: the node changed");
}

/// A KMM-layout image of one signed module `hello` for `release`.
pub fn hello_image(node: &Node, keys: &Keys, file: &str, release: &str, greeting: &str) -> String {
    let m = ko(
        &node.work(),
        "hello",
        &vermagic(release),
        &[greeting],
        &["printk"],
        &[],
    );
    node.image(
        file,
        &[(
            format!("opt/lib/modules/{release}/extra/hello.ko"),
            keys.sign(&m),
        )],
    )
}
