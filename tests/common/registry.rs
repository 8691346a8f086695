//! A real `docker-registry` (Debian package `docker-registry`) on a free
//! 127.0.0.1 port, for the tests that push and pull.
#![allow(dead_code)] // not every test binary uses every helper

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::Duration;

use composer::oci::reference::{RegistryRef, parse_registry};
use tempfile::TempDir;

/// `composer:s3cret-pw`, bcrypt, made with
/// `perl -e 'print crypt("s3cret-pw", q($2b$05$) . "abcdefghijklmnopqrstuu")'`.
pub const HTPASSWD: &str = "composer:$2b$05$abcdefghijklmnopqrstuuzSvhclVSvY9ufOheOOhcPviTPFJlqIC";
pub const USER: &str = "composer";
pub const PASSWORD: &str = "s3cret-pw";

/// A `docker-registry` on a free 127.0.0.1 port, killed when dropped.
pub struct Registry {
    pub port: u16,
    child: Child,
    dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(false, false)
    }

    /// With `htpasswd`, the registry wants [`USER`] and [`PASSWORD`]; with
    /// `tls`, it serves HTTPS only, with a self-signed certificate.
    pub fn start_with(htpasswd: bool, tls: bool) -> Registry {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: composer-test\n",
                dir.path().join("data").display()
            );
            if tls {
                let key =
                    rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
                std::fs::write(dir.path().join("cert.pem"), key.cert.pem()).unwrap();
                std::fs::write(dir.path().join("key.pem"), key.signing_key.serialize_pem())
                    .unwrap();
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    dir.path().join("cert.pem").display(),
                    dir.path().join("key.pem").display()
                ));
            }
            if htpasswd {
                std::fs::write(dir.path().join("htpasswd"), format!("{HTPASSWD}\n")).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: composer-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ));
            }
            std::fs::write(dir.path().join("config.yml"), config).unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry (Debian package docker-registry) runs");
            let mut reg = Registry { port, child, dir };
            if reg.wait_ready() {
                return reg;
            }
        }
        panic!("docker-registry did not start on five ports");
    }

    /// Waits until `/v2/` answers; `false` when the registry exited (a
    /// port taken in the meantime).
    pub fn wait_ready(&mut self) -> bool {
        for _ in 0..1000 {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("docker-registry never answered: {}", self.log());
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn reference(&self, repo_tag: &str) -> RegistryRef {
        parse_registry(&format!("{}/{repo_tag}", self.addr())).unwrap()
    }

    /// The repositories the registry holds (`/v2/_catalog`).
    pub fn catalog(&self) -> Vec<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"GET /v2/_catalog HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("catalog: {e}: {answer}"));
        v["repositories"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The tags of `repo` (`/v2/<repo>/tags/list`).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let v = self.get_json(&format!("/v2/{repo}/tags/list"));
        let mut tags: Vec<String> = v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        tags
    }

    /// The manifest `reference` of `repo` names, as JSON.
    pub fn manifest(&self, repo: &str, reference: &str) -> serde_json::Value {
        self.get_json(&format!("/v2/{repo}/manifests/{reference}"))
    }

    /// Where the registry keeps the blob `digest` (`sha256:<hex>`) on disk.
    pub fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Every blob the registry stores.
    pub fn blob_files(&self) -> Vec<std::path::PathBuf> {
        let root = self.dir.path().join("data/docker/registry/v2/blobs");
        let mut out = Vec::new();
        let mut todo = vec![root];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                } else if p.file_name().is_some_and(|n| n == "data") {
                    out.push(p);
                }
            }
        }
        out
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(
            format!(
                "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {answer}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
