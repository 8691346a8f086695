//! The kernel's own module calls, without kmod: `finit_module(2)` for a
//! module file, `init_module(2)` for a compressed one (decompressed here,
//! so any kernel takes it, whatever compressions it was built with), and
//! `delete_module(2)` with `O_NONBLOCK` (never forced). A refusal is
//! translated into plain words for its errno, with the kernel's own
//! messages about it when `/dev/kmsg` can be read.
//!
//! Invariant: "already loaded" (`EEXIST`) and "not loaded" (`ENOENT` from
//! `delete_module`) are outcomes, not errors: loading and unloading are
//! idempotent.

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

/// What a call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Loading: a module of that name was already in the kernel.
    /// Unloading: it was not.
    AlreadyThere,
}

/// The kernel refused a call.
#[derive(Debug, thiserror::Error)]
#[error("{}{}", meaning(*op, *errno), messages_text(messages))]
pub struct KernelError {
    pub op: Op,
    pub errno: Errno,
    /// What the kernel logged about it, oldest first.
    pub messages: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Load,
    Unload,
}

/// Reading or decompressing a module failed before the kernel saw it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub why: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

fn messages_text(messages: &[String]) -> String {
    if messages.is_empty() {
        String::new()
    } else {
        format!("; the kernel said: {}", messages.join(" / "))
    }
}

/// The errno's text and what it means for a module, in plain words.
pub fn meaning(op: Op, errno: Errno) -> String {
    let why = match (op, errno) {
        (Op::Load, Errno::KEYREJECTED) => {
            "the kernel does not trust the module's signer (the module is unsigned, or signed by a key the kernel does not hold, and the kernel enforces signatures)"
        }
        (Op::Load, Errno::NOKEY) => {
            "the key the module was signed with is not in the kernel's keyring"
        }
        (Op::Load, Errno::BADMSG) => "the module's signature is malformed",
        (Op::Load, Errno::NOEXEC) => {
            "not a module for this kernel (another release's vermagic or symbol versions, another architecture, or not a module at all)"
        }
        (Op::Load, Errno::NOENT) => {
            "the module uses a symbol that neither the kernel nor a loaded module exports (are its dependencies loaded?), or the kernel lacks the hash algorithm its signature needs"
        }
        (Op::Load, Errno::INVAL) => {
            "the kernel refused a parameter value, or a symbol version disagrees with the kernel's"
        }
        (Op::Load, Errno::PERM) | (Op::Unload, Errno::PERM) => {
            "needs root (CAP_SYS_MODULE); the kernel may also forbid it (lockdown, or /proc/sys/kernel/modules_disabled set to 1)"
        }
        (Op::Load, Errno::BUSY) => "a module of that name is being loaded or unloaded right now",
        (Op::Load, Errno::NOMEM) => "the kernel has no memory for the module",
        (_, Errno::NOSYS) => "the kernel was built without module support",
        (Op::Unload, Errno::WOULDBLOCK) => {
            "the module is in use (by other modules or by processes)"
        }
        (Op::Unload, Errno::BUSY) => {
            "the module cannot be unloaded now (it has no exit function, or it is still initialising)"
        }
        _ => "",
    };
    let text = std::io::Error::from_raw_os_error(errno.raw_os_error()).to_string();
    // "Key was rejected by service (os error 129)" reads better without
    // the number.
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    if why.is_empty() {
        text
    } else {
        format!("{text}: {why}")
    }
}

/// Loads the module at `path` with `params` (`key=value key2=value2`).
/// `kmsg` is read for the kernel's messages when the call fails.
pub fn insert(path: &Path, params: &str, kmsg: &Path) -> Result<Outcome, CallError> {
    let read_err = |why: String| ReadError {
        path: path.to_path_buf(),
        why,
    };
    let params = CString::new(params).map_err(|_| read_err("parameters hold a NUL byte".into()))?;
    let compressed = !path.to_string_lossy().ends_with(".ko");
    let log = Kmsg::open(kmsg);
    let result = if compressed {
        let bytes = crate::validate::modules::read_module(path).map_err(read_err)?;
        rustix::system::init_module(&bytes, &params)
    } else {
        let file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        rustix::system::finit_module(&file, &params, 0)
    };
    match result {
        Ok(()) => Ok(Outcome::Done),
        Err(Errno::EXIST) => Ok(Outcome::AlreadyThere),
        Err(errno) => Err(KernelError {
            op: Op::Load,
            errno,
            messages: log.map(Kmsg::rest).unwrap_or_default(),
        }
        .into()),
    }
}

/// Unloads the module `name` unless something uses it.
pub fn remove(name: &str, kmsg: &Path) -> Result<Outcome, KernelError> {
    let refused = |errno, messages| KernelError {
        op: Op::Unload,
        errno,
        messages,
    };
    let cname = CString::new(name).map_err(|_| refused(Errno::INVAL, Vec::new()))?;
    let log = Kmsg::open(kmsg);
    match rustix::system::delete_module(&cname, libc::O_NONBLOCK) {
        Ok(()) => Ok(Outcome::Done),
        Err(Errno::NOENT) => Ok(Outcome::AlreadyThere),
        Err(errno) => Err(refused(errno, log.map(Kmsg::rest).unwrap_or_default())),
    }
}

/// The kernel's log from the moment it was opened.
struct Kmsg(std::fs::File);

impl Kmsg {
    /// None when the log cannot be read (not root, no /dev): the call's
    /// errno is then all there is to say.
    fn open(path: &Path) -> Option<Kmsg> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        f.seek(SeekFrom::End(0)).ok()?;
        Some(Kmsg(f))
    }

    /// The messages logged since [`Kmsg::open`] (at most 20).
    fn rest(mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        while out.len() < 20 {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend(kmsg_text(&buf[..n])),
                // Overwritten records: the next read goes on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// The text of one `/dev/kmsg` record (`prio,seq,usec,flags;text\n`
/// followed by ` KEY=value` lines); None for the taint notices a load
/// logs before it fails ("loading out-of-tree module taints kernel."),
/// which do not say why it failed.
pub fn kmsg_text(record: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(record);
    let first = s.lines().next()?;
    let (_, text) = first.split_once(';')?;
    let text = text.trim();
    let taint = text.ends_with("taints kernel.") || text.ends_with("tainting kernel");
    (!text.is_empty() && !taint).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_refusals_are_said_in_plain_words() {
        let m = meaning(Op::Load, Errno::KEYREJECTED);
        assert!(
            m.starts_with("Key was rejected by service: the kernel does not trust"),
            "{m}"
        );
        assert!(
            meaning(Op::Load, Errno::NOEXEC)
                .starts_with("Exec format error: not a module for this kernel")
        );
        assert!(meaning(Op::Load, Errno::NOENT).contains("symbol"));
        assert!(meaning(Op::Unload, Errno::WOULDBLOCK).contains("in use"));
        // An errno without a translation still says what it is.
        assert_eq!(meaning(Op::Load, Errno::NXIO), "No such device or address");
    }

    #[test]
    fn kernel_error_carries_the_kernel_log() {
        let e = KernelError {
            op: Op::Load,
            errno: Errno::INVAL,
            messages: vec!["dummy: `x' invalid for parameter `numdummies'".into()],
        };
        let text = e.to_string();
        assert!(text.starts_with("Invalid argument: "), "{text}");
        assert!(text.ends_with("the kernel said: dummy: `x' invalid for parameter `numdummies'"));
    }

    #[test]
    fn kmsg_record_text_drops_prefix_and_dictionary() {
        assert_eq!(
            kmsg_text(b"4,1234,5678,-;hello_user: Unknown symbol hello_pcie_greeting (err -2)\n SUBSYSTEM=x\n")
                .as_deref(),
            Some("hello_user: Unknown symbol hello_pcie_greeting (err -2)")
        );
        assert_eq!(kmsg_text(b"garbage"), None);
        assert_eq!(
            kmsg_text(b"4,1,2,-;hello_user: loading out-of-tree module taints kernel.\n"),
            None
        );
        assert_eq!(
            kmsg_text(b"4,1,2,-;hello_user: module verification failed: signature and/or required key missing - tainting kernel\n"),
            None
        );
    }
}
