//! Template variables: the built-in platform variables, `--build-arg`s,
//! Pkgfile `vars` and the `vars.yaml` cascade, in bldr's precedence order.
//!
//! Precedence (later wins): built-ins for the platform (and
//! `KERNEL_FULL_VERSION`, the kernel release a build is for, when one is
//! given: KMM's name for `uname -r`) < `BUILD_ARG_<NAME>`
//! < the root's Pkgfile `vars` < `vars.yaml` files from the root down to the
//! package directory, each rendered with everything above it.
//!
//! Invariant: every value is a string holding the scalar's source text, as
//! bldr's `map[string]string` decoding gives it (`4.20` stays `4.20`, `null`
//! is empty); a list or mapping as a value is an error, as it is in bldr.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use gotmpl::Value;

use super::yaml::{Node, Reader};

/// A target platform of a build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Platform {
    #[serde(rename = "linux/amd64")]
    LinuxAmd64,
    #[serde(rename = "linux/arm64")]
    LinuxArm64,
}

impl Platform {
    pub const ALL: [Platform; 2] = [Platform::LinuxAmd64, Platform::LinuxArm64];

    /// The built-in variables bldr defines for this platform.
    pub fn builtins(self) -> Vars {
        let (arch, cflags) = match self {
            Platform::LinuxAmd64 => ("x86_64", "-O2 -g0 -march=x86-64-v2 -mtune=generic"),
            Platform::LinuxArm64 => ("aarch64", "-O2 -g0"),
        };
        let mut v = Vars::default();
        let mut set = |k: &str, val: String| v.set(k, Value::String(val.into()));
        set("ARCH", arch.to_string());
        set("BUILD", format!("{arch}-linux-musl"));
        set("HOST", format!("{arch}-linux-musl"));
        set("TARGET", format!("{arch}-talos-linux-musl"));
        set("CFLAGS", cflags.to_string());
        set("CXXFLAGS", cflags.to_string());
        set("LDFLAGS", "-s".to_string());
        set("VENDOR", "talos".to_string());
        set("SYSROOT", "/talos".to_string());
        set("PATH", "/bin:/usr/bin:/sbin:/usr/sbin".to_string());
        v
    }
}

/// Checks a kernel release as `uname -r` prints it (`6.1.0-57-cloud-amd64`):
/// it names directories (`/lib/modules/<release>`) and image tags, so it
/// must be one path component of letters, digits, `.`, `_`, `+` and `-`,
/// starting with a digit.
pub fn check_kernel_release(release: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-');
    if release.is_empty() {
        return Err("a kernel release cannot be empty".into());
    }
    if !release.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "kernel release `{release}` must start with a digit, as `uname -r` prints it (6.1.0-57-cloud-amd64)"
        ));
    }
    if let Some(c) = release.chars().find(|&c| !ok_char(c)) {
        return Err(format!(
            "kernel release `{release}` holds {c:?}: only letters, digits, `.`, `_`, `+` and `-` are allowed"
        ));
    }
    if release.len() > 128 {
        return Err(format!(
            "kernel release `{release}` is longer than an image tag may be (128)"
        ));
    }
    Ok(())
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Platform::LinuxAmd64 => "linux/amd64",
            Platform::LinuxArm64 => "linux/arm64",
        })
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linux/amd64" | "amd64" => Ok(Platform::LinuxAmd64),
            "linux/arm64" | "arm64" => Ok(Platform::LinuxArm64),
            other => Err(format!(
                "unknown platform `{other}` (expected linux/amd64 or linux/arm64)"
            )),
        }
    }
}

/// A set of template variables.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    map: BTreeMap<Arc<str>, Value>,
}

impl Vars {
    pub fn set(&mut self, name: &str, value: Value) {
        self.map.insert(Arc::from(name), value);
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(|k| k.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.map.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// `other` on top of `self`.
    pub fn merge(&mut self, other: &Vars) {
        for (k, v) in &other.map {
            self.map.insert(Arc::clone(k), v.clone());
        }
    }

    /// The map handed to a template as its data.
    pub fn to_value(&self) -> Value {
        Value::Map(Arc::new(self.map.clone()))
    }

    /// `--build-arg NAME=VALUE` pairs as `BUILD_ARG_NAME` variables.
    pub fn from_build_args(args: &[(String, String)]) -> Vars {
        let mut v = Vars::default();
        for (k, val) in args {
            v.set(
                &format!("BUILD_ARG_{k}"),
                Value::String(val.as_str().into()),
            );
        }
        v
    }

    /// The variables of a YAML mapping (Pkgfile `vars`, a `vars.yaml`).
    pub fn from_node(reader: &mut Reader<'_>, node: &Node<'_>, field: &str) -> Vars {
        let mut v = Vars::default();
        for (k, val) in reader.string_map(node, field) {
            v.set(&k, Value::String(val.value.into()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_name_their_builtins() {
        let p: Platform = "linux/arm64".parse().unwrap();
        let b = p.builtins();
        assert_eq!(b.get("ARCH").unwrap().to_string(), "aarch64");
        assert_eq!(
            b.get("TARGET").unwrap().to_string(),
            "aarch64-talos-linux-musl"
        );
        assert!("linux/riscv".parse::<Platform>().is_err());
    }

    #[test]
    fn kernel_releases_are_one_safe_path_component() {
        assert!(check_kernel_release("6.1.0-57-cloud-amd64").is_ok());
        assert!(check_kernel_release("6.6.54-talos").is_ok());
        assert!(check_kernel_release("5.14.0-427.el9.x86_64+rt").is_ok());
        for bad in ["", "../etc", "6.1/x", "latest", "6.1 0", "6.1:0"] {
            assert!(check_kernel_release(bad).is_err(), "{bad:?} accepted");
        }
    }
}
