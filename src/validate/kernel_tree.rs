//! Kernel build trees: what a kernel that composer did not necessarily
//! build says about the modules it will load.
//!
//! A kernel build tree is a directory holding `Module.symvers` and
//! `include/generated/utsrelease.h`: a built kernel source tree (the demo's
//! `/src`), or Debian's `usr/src/linux-headers-<release>`. [`KernelTree`]
//! reads from it:
//!
//! - the release: `UTS_RELEASE` of `include/generated/utsrelease.h` (only
//!   without it `include/config/kernel.release`, which Debian sets to the
//!   upstream version, `6.1.192`, not the release);
//! - the vermagic string, built as the kernel's `include/linux/vermagic.h`
//!   and `arch/*/include/asm/vermagic.h` (6.1) build `VERMAGIC_STRING`,
//!   from the configuration in `include/generated/autoconf.h` (else
//!   `.config`): `<release> SMP preempt mod_unload modversions ` plus the
//!   architecture's part (empty on x86-64, `aarch64` on arm64);
//! - the exported symbols: `Module.symvers`, one
//!   `CRC<TAB>symbol<TAB>module<TAB>EXPORT_SYMBOL[_GPL][<TAB>namespace]` a
//!   line, `module` being `vmlinux` or the in-tree module's path without
//!   `.ko`.
//!
//! [`find_kernel_trees`] finds the trees inside a directory (a stage's
//! output), a few levels deep.
//!
//! Invariants: symlinks are never followed while searching (Debian's
//! headers link `scripts` into another package); a tree is read whole or
//! not at all, and every error names the file (and line) at fault.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// How deep [`find_kernel_trees`] looks by default: deep enough for
/// `usr/src/linux-headers-<release>` in an unpacked Debian package.
pub const SEARCH_DEPTH: usize = 4;

const UTSRELEASE: &str = "include/generated/utsrelease.h";
const KERNEL_RELEASE: &str = "include/config/kernel.release";
const AUTOCONF: &str = "include/generated/autoconf.h";
const RANDSTRUCT_HASH: &str = "include/generated/randstruct_hash.h";
const SYMVERS: &str = "Module.symvers";

/// One symbol the kernel exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// `vmlinux`, or the in-tree module's path without `.ko`
    /// (`drivers/net/tun`).
    pub module: String,
    /// `EXPORT_SYMBOL_GPL`: only modules under a GPL-compatible licence
    /// may use it.
    pub gpl_only: bool,
    /// `EXPORT_SYMBOL_NS`: a module must `MODULE_IMPORT_NS` it.
    pub namespace: Option<String>,
}

impl Export {
    /// Whether the kernel image itself exports it (not an in-tree module).
    pub fn in_vmlinux(&self) -> bool {
        self.module == "vmlinux"
    }
}

/// What a kernel build tree says about the kernel it builds modules for.
#[derive(Clone, Debug)]
pub struct KernelTree {
    /// The directory read.
    pub dir: PathBuf,
    /// `6.1.0-57-cloud-amd64`.
    pub release: String,
    /// The kernel's `VERMAGIC_STRING`, exactly (x86-64's ends in a space).
    pub vermagic: String,
    /// Every exported symbol, by name.
    pub exports: HashMap<String, Export>,
    /// Where the exports were read, for messages (`<dir>/Module.symvers`).
    pub exports_from: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelTreeError {
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: not a kernel build tree: no {UTSRELEASE} nor {KERNEL_RELEASE} (is the kernel built, or `make modules_prepare` run?)",
        dir.display()
    )]
    NoRelease { dir: PathBuf },
    #[error("{}: no `#define UTS_RELEASE \"...\"`", path.display())]
    BadRelease { path: PathBuf },
    #[error("{}: no {AUTOCONF} nor .config: the kernel's configuration is unknown", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("{}: {message}", dir.display())]
    Vermagic { dir: PathBuf, message: String },
    #[error("{}:{line}: {message}", path.display())]
    Symvers {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: lists no exported symbol (is the kernel built?)", path.display())]
    NoExports { path: PathBuf },
    #[error(
        "{}: no kernel build tree (a directory with {SYMVERS} and {UTSRELEASE}) here or up to {SEARCH_DEPTH} levels below",
        dir.display()
    )]
    NoneFound { dir: PathBuf },
}

fn read_text(path: &Path) -> Result<String, KernelTreeError> {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|source| KernelTreeError::Unreadable {
            path: path.to_path_buf(),
            source,
        })
}

impl KernelTree {
    /// Reads the kernel build tree at `dir`.
    pub fn read(dir: &Path) -> Result<KernelTree, KernelTreeError> {
        if let Err(source) = std::fs::read_dir(dir) {
            return Err(KernelTreeError::Unreadable {
                path: dir.to_path_buf(),
                source,
            });
        }
        let release = read_release(dir)?;
        let config = KernelConfig::read(dir)?;
        let randstruct = if config.is_set("CONFIG_RANDSTRUCT") {
            let path = dir.join(RANDSTRUCT_HASH);
            let text = read_text(&path)?;
            Some(
                define_string(&text, "RANDSTRUCT_HASHED_SEED").ok_or_else(|| {
                    KernelTreeError::Vermagic {
                        dir: dir.to_path_buf(),
                        message: format!("{RANDSTRUCT_HASH}: no RANDSTRUCT_HASHED_SEED"),
                    }
                })?,
            )
        } else {
            None
        };
        let vermagic = vermagic(&release, &config, randstruct.as_deref()).map_err(|message| {
            KernelTreeError::Vermagic {
                dir: dir.to_path_buf(),
                message,
            }
        })?;
        let symvers = dir.join(SYMVERS);
        let exports = parse_symvers(&symvers, &read_text(&symvers)?)?;
        if exports.is_empty() {
            return Err(KernelTreeError::NoExports { path: symvers });
        }
        Ok(KernelTree {
            dir: dir.to_path_buf(),
            release,
            vermagic,
            exports,
            exports_from: symvers.display().to_string(),
        })
    }

    /// Every kernel build tree at `dir` or below it (up to
    /// [`SEARCH_DEPTH`] levels), read; none is an error.
    pub fn read_all(dir: &Path) -> Result<Vec<KernelTree>, KernelTreeError> {
        std::fs::read_dir(dir).map_err(|source| KernelTreeError::Unreadable {
            path: dir.to_path_buf(),
            source,
        })?;
        let found = find_kernel_trees(dir, SEARCH_DEPTH);
        if found.is_empty() {
            return Err(KernelTreeError::NoneFound {
                dir: dir.to_path_buf(),
            });
        }
        found.iter().map(|d| KernelTree::read(d)).collect()
    }

    /// The symbol's export, if the kernel (or one of its in-tree modules)
    /// exports it.
    pub fn export(&self, symbol: &str) -> Option<&Export> {
        self.exports.get(symbol)
    }

    /// The names of the in-tree modules that export symbols (`tun` for
    /// `drivers/net/tun`), `-` as `_`.
    pub fn module_names(&self) -> BTreeSet<String> {
        self.exports
            .values()
            .filter(|e| !e.in_vmlinux())
            .map(|e| e.module.rsplit('/').next().unwrap_or(&e.module))
            .map(|n| n.replace('-', "_"))
            .collect()
    }

    /// Whether a module's `vermagic=` is this kernel's. Trailing spaces do
    /// not count (modinfo shows x86-64's trailing space, a reader may
    /// not); everything else must be equal, as the kernel compares it.
    pub fn accepts_vermagic(&self, vermagic: &str) -> bool {
        vermagic.trim_end() == self.vermagic.trim_end()
    }
}

/// Whether `dir` is a kernel build tree: it holds `Module.symvers` and
/// `include/generated/utsrelease.h`.
pub fn is_kernel_tree(dir: &Path) -> bool {
    dir.join(SYMVERS).is_file() && dir.join(UTSRELEASE).is_file()
}

/// The kernel build trees at `dir` or below it, up to `max_depth` levels,
/// in name order; never inside a tree found, never through a symlink.
/// Directories that cannot be read are passed over.
pub fn find_kernel_trees(dir: &Path, max_depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .max_depth(max_depth)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walk.next() {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_dir() && is_kernel_tree(entry.path()) {
            found.push(entry.into_path());
            walk.skip_current_dir();
        }
    }
    found
}

fn read_release(dir: &Path) -> Result<String, KernelTreeError> {
    let uts = dir.join(UTSRELEASE);
    if uts.is_file() {
        let text = read_text(&uts)?;
        return define_string(&text, "UTS_RELEASE")
            .filter(|r| !r.is_empty())
            .ok_or(KernelTreeError::BadRelease { path: uts });
    }
    let plain = dir.join(KERNEL_RELEASE);
    if plain.is_file() {
        let text = read_text(&plain)?;
        let release = text.trim();
        if !release.is_empty() && !release.contains(char::is_whitespace) {
            return Ok(release.to_string());
        }
    }
    Err(KernelTreeError::NoRelease {
        dir: dir.to_path_buf(),
    })
}

/// The string of `#define NAME "value"` in a C header.
fn define_string(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.trim().splitn(3, char::is_whitespace);
        if words.next() != Some("#define") || words.next() != Some(name) {
            return None;
        }
        let value = words.next()?.trim();
        value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .map(str::to_string)
    })
}

/// A kernel configuration: the `CONFIG_*` macros it defines, as
/// `autoconf.h` defines them (`CONFIG_X_MODULE` for `=m`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig(BTreeMap<String, String>);

impl KernelConfig {
    /// From `include/generated/autoconf.h`, else `.config`.
    pub fn read(dir: &Path) -> Result<KernelConfig, KernelTreeError> {
        let autoconf = dir.join(AUTOCONF);
        if autoconf.is_file() {
            return Ok(KernelConfig::from_autoconf(&read_text(&autoconf)?));
        }
        let dot = dir.join(".config");
        if dot.is_file() {
            return Ok(KernelConfig::from_dot_config(&read_text(&dot)?));
        }
        Err(KernelTreeError::NoConfig {
            dir: dir.to_path_buf(),
        })
    }

    /// The `#define CONFIG_...` lines of an `autoconf.h`.
    pub fn from_autoconf(text: &str) -> KernelConfig {
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let mut words = line.trim().splitn(3, char::is_whitespace);
            if words.next() != Some("#define") {
                continue;
            }
            if let Some(name) = words.next().filter(|n| n.starts_with("CONFIG_")) {
                let value = words.next().unwrap_or("").trim();
                map.insert(name.to_string(), value.to_string());
            }
        }
        KernelConfig(map)
    }

    /// The `CONFIG_X=...` lines of a `.config`, as `autoconf.h` would
    /// define them (`=y` as `1`, `=m` as `CONFIG_X_MODULE 1`).
    pub fn from_dot_config(text: &str) -> KernelConfig {
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let Some((name, value)) = line.trim().split_once('=') else {
                continue;
            };
            if !name.starts_with("CONFIG_") {
                continue;
            }
            match value {
                "y" => map.insert(name.to_string(), "1".to_string()),
                "m" => map.insert(format!("{name}_MODULE"), "1".to_string()),
                "n" => None,
                v => map.insert(name.to_string(), v.to_string()),
            };
        }
        KernelConfig(map)
    }

    /// `#ifdef NAME`.
    pub fn is_set(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// The kernel's `VERMAGIC_STRING` (6.1's `include/linux/vermagic.h`) for
/// `release` and `config`; `randstruct` is `RANDSTRUCT_HASHED_SEED` when
/// the kernel has `CONFIG_RANDSTRUCT`.
pub fn vermagic(
    release: &str,
    config: &KernelConfig,
    randstruct: Option<&str>,
) -> Result<String, String> {
    let mut v = format!("{release} ");
    if config.is_set("CONFIG_SMP") {
        v.push_str("SMP ");
    }
    // 5.12 and later: PREEMPT_BUILD; before it, PREEMPT said the same.
    let preempt = config.is_set("CONFIG_PREEMPT_BUILD")
        || (config.is_set("CONFIG_PREEMPT") && !config.is_set("CONFIG_PREEMPT_RT"));
    if preempt {
        v.push_str("preempt ");
    } else if config.is_set("CONFIG_PREEMPT_RT") {
        v.push_str("preempt_rt ");
    }
    if config.is_set("CONFIG_MODULE_UNLOAD") {
        v.push_str("mod_unload ");
    }
    if config.is_set("CONFIG_MODVERSIONS") {
        v.push_str("modversions ");
    }
    v.push_str(&arch_vermagic(config)?);
    match (config.is_set("CONFIG_RANDSTRUCT"), randstruct) {
        (false, _) => {}
        (true, Some(hash)) => v.push_str(&format!("RANDSTRUCT_{hash}")),
        (true, None) => {
            return Err(format!(
                "CONFIG_RANDSTRUCT is set but {RANDSTRUCT_HASH} was not given"
            ));
        }
    }
    Ok(v)
}

/// `MODULE_ARCH_VERMAGIC` of `arch/<arch>/include/asm/vermagic.h` (6.1),
/// for the architectures composer builds for and their neighbours.
fn arch_vermagic(config: &KernelConfig) -> Result<String, String> {
    if config.is_set("CONFIG_X86_64") {
        Ok(String::new())
    } else if config.is_set("CONFIG_ARM64") {
        Ok("aarch64".to_string())
    } else if config.is_set("CONFIG_RISCV") {
        Ok("riscv".to_string())
    } else if config.is_set("CONFIG_PPC") {
        let mut v = String::new();
        if config.is_set("CONFIG_MPROFILE_KERNEL") {
            v.push_str("mprofile-kernel ");
        }
        if config.is_set("CONFIG_RELOCATABLE") {
            v.push_str("relocatable ");
        }
        Ok(v)
    } else {
        Err("the kernel's architecture is not one whose module vermagic composer knows (x86-64, arm64, riscv, powerpc)".to_string())
    }
}

/// The exports listed by a `Module.symvers`.
pub fn parse_symvers(path: &Path, text: &str) -> Result<HashMap<String, Export>, KernelTreeError> {
    let mut exports = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let err = |message: String| KernelTreeError::Symvers {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let fields: Vec<&str> = line.split('\t').collect();
        let [crc, symbol, module, kind, rest @ ..] = fields.as_slice() else {
            return Err(err(
                "expected CRC, symbol, module and export type separated by tabs".to_string(),
            ));
        };
        if rest.len() > 1 {
            return Err(err(format!("{} fields, at most 5", fields.len())));
        }
        if !crc.starts_with("0x") || u64::from_str_radix(&crc[2..], 16).is_err() {
            return Err(err(format!("`{crc}` is not a CRC (0x and hex digits)")));
        }
        if symbol.is_empty() || module.is_empty() {
            return Err(err("empty symbol or module name".to_string()));
        }
        let gpl_only = match *kind {
            "EXPORT_SYMBOL" => false,
            "EXPORT_SYMBOL_GPL" => true,
            other => {
                return Err(err(format!(
                    "`{other}` is not EXPORT_SYMBOL or EXPORT_SYMBOL_GPL"
                )));
            }
        };
        let namespace = rest
            .first()
            .filter(|n| !n.is_empty())
            .map(|n| n.to_string());
        exports.insert(
            symbol.to_string(),
            Export {
                module: module.to_string(),
                gpl_only,
                namespace,
            },
        );
    }
    Ok(exports)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_64: &str = "#define CONFIG_64BIT 1\n#define CONFIG_X86_64 1\n#define CONFIG_SMP 1\n#define CONFIG_PREEMPT_BUILD 1\n#define CONFIG_PREEMPT_VOLUNTARY 1\n#define CONFIG_MODULE_UNLOAD 1\n#define CONFIG_MODVERSIONS 1\n#define CONFIG_TUN_MODULE 1\n#define CONFIG_LOCALVERSION \"\"\n";

    #[test]
    fn vermagic_of_an_x86_64_kernel_ends_in_a_space() {
        let config = KernelConfig::from_autoconf(X86_64);
        assert_eq!(
            vermagic("6.1.0-57-cloud-amd64", &config, None).unwrap(),
            "6.1.0-57-cloud-amd64 SMP preempt mod_unload modversions "
        );
    }

    #[test]
    fn vermagic_of_arm64_rt_without_modversions() {
        let config = KernelConfig::from_autoconf(
            "#define CONFIG_ARM64 1\n#define CONFIG_SMP 1\n#define CONFIG_PREEMPT_RT 1\n#define CONFIG_MODULE_UNLOAD 1\n",
        );
        assert_eq!(
            vermagic("6.1.0", &config, None).unwrap(),
            "6.1.0 SMP preempt_rt mod_unload aarch64"
        );
    }

    #[test]
    fn vermagic_of_a_minimal_kernel_has_only_the_release() {
        let config = KernelConfig::from_autoconf("#define CONFIG_X86_64 1\n");
        assert_eq!(vermagic("6.1.0", &config, None).unwrap(), "6.1.0 ");
    }

    #[test]
    fn vermagic_with_randstruct_needs_its_hash() {
        let config =
            KernelConfig::from_autoconf("#define CONFIG_X86_64 1\n#define CONFIG_RANDSTRUCT 1\n");
        assert_eq!(
            vermagic("6.1.0", &config, Some("ab12")).unwrap(),
            "6.1.0 RANDSTRUCT_ab12"
        );
        assert!(vermagic("6.1.0", &config, None).is_err());
    }

    #[test]
    fn vermagic_of_an_unknown_architecture_is_an_error() {
        let config = KernelConfig::from_autoconf("#define CONFIG_S390 1\n");
        let err = vermagic("6.1.0", &config, None).unwrap_err();
        assert!(err.contains("x86-64, arm64"), "{err}");
    }

    #[test]
    fn dot_config_reads_as_autoconf_does() {
        let dot = "# CONFIG_FOO is not set\nCONFIG_64BIT=y\nCONFIG_X86_64=y\nCONFIG_SMP=y\nCONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_MODULE_UNLOAD=y\nCONFIG_MODVERSIONS=y\nCONFIG_TUN=m\nCONFIG_LOCALVERSION=\"\"\nCONFIG_BAR=n\n";
        assert_eq!(
            KernelConfig::from_dot_config(dot),
            KernelConfig::from_autoconf(X86_64)
        );
    }

    #[test]
    fn uts_release_is_read_from_its_define() {
        let text = "#define UTS_RELEASE \"6.1.0-57-cloud-amd64\"\n";
        assert_eq!(
            define_string(text, "UTS_RELEASE").as_deref(),
            Some("6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            define_string("#define UTS_RELEASE x\n", "UTS_RELEASE"),
            None
        );
        assert_eq!(
            define_string("#define UTS_RELEASE_X \"a\"\n", "UTS_RELEASE"),
            None
        );
    }

    #[test]
    fn symvers_lines_give_module_licence_and_namespace() {
        let text = "0x4c9d28b0\tphys_base\tvmlinux\tEXPORT_SYMBOL\t\n0x84b45156\tinsert_resource_expand_to_fit\tvmlinux\tEXPORT_SYMBOL_GPL\tCXL\n0x00000001\ttun_get_socket\tdrivers/net/tun\tEXPORT_SYMBOL_GPL\n";
        let e = parse_symvers(Path::new("Module.symvers"), text).unwrap();
        assert_eq!(e.len(), 3);
        assert!(!e["phys_base"].gpl_only && e["phys_base"].namespace.is_none());
        assert_eq!(
            e["insert_resource_expand_to_fit"].namespace.as_deref(),
            Some("CXL")
        );
        assert_eq!(e["tun_get_socket"].module, "drivers/net/tun");
        assert!(!e["tun_get_socket"].in_vmlinux());
    }

    #[test]
    fn a_broken_symvers_line_is_named() {
        let cases = [
            ("0x1\tsym\tvmlinux\n", "expected CRC"),
            ("zz\tsym\tvmlinux\tEXPORT_SYMBOL\n", "`zz` is not a CRC"),
            ("0x1\tsym\tvmlinux\tEXPORT_ME\n", "`EXPORT_ME` is not"),
            ("0x1\t\tvmlinux\tEXPORT_SYMBOL\n", "empty symbol"),
            ("0x1\ts\tvmlinux\tEXPORT_SYMBOL\tNS\tx\n", "6 fields"),
        ];
        for (text, want) in cases {
            let input = format!("0x2\tok\tvmlinux\tEXPORT_SYMBOL\t\n{text}");
            let err = parse_symvers(Path::new("M"), &input)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("M:2: ") && err.contains(want), "{err}");
        }
    }
}
