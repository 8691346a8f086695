//! The symbols of a kernel module as the kernel's module loader (6.1,
//! `kernel/module/main.c`) sees them, and whether a kernel resolves them.
//!
//! - What a module needs: every `SHN_UNDEF` symbol of its ELF symbol table
//!   but the null symbol, weak symbols (the loader leaves them 0) and
//!   `_GLOBAL_OFFSET_TABLE_` on x86 (`ignore_undef_symbol`).
//! - What a module exports: one `__ksymtab_<name>` symbol per export, in
//!   section `__ksymtab` (`EXPORT_SYMBOL`) or `__ksymtab_gpl`
//!   (`EXPORT_SYMBOL_GPL`), and its namespace in the string
//!   `__kstrtabns_<name>` points at (empty: none).
//! - Whether it loads ([`unresolved`]): each needed symbol is exported by a
//!   module of the same tree or by the kernel (its `Module.symvers`); a
//!   GPL-only export is not for a module whose licence is not
//!   GPL-compatible (`license_is_gpl_compatible`); a namespaced export
//!   needs `import_ns=` of its namespace; and a module may not export a
//!   symbol the kernel image itself exports (`exports duplicate symbol`).

use std::collections::HashMap;

use object::{
    Architecture, Object, ObjectSection, ObjectSymbol, SectionIndex, SymbolKind, SymbolSection,
};

use super::kernel_tree::{Export, KernelTree};
use crate::sign::kmod;

/// The symbols a module needs and provides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleSymbols {
    /// Needed: undefined, not weak, not ignored by the loader; sorted.
    pub undefined: Vec<String>,
    /// Provided: the module's exports, by name.
    pub exports: HashMap<String, Export>,
}

/// The symbols of a module's ELF (a signature, if any, is cut off first).
pub fn module_symbols(module: &[u8], name: &str) -> Result<ModuleSymbols, String> {
    let elf = kmod::split(module).map(|s| s.content).unwrap_or(module);
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF object: {e}"))?;
    let x86 = matches!(
        file.architecture(),
        Architecture::X86_64 | Architecture::X86_64_X32 | Architecture::I386
    );
    let section_name = |index: SectionIndex| {
        file.section_by_index(index)
            .ok()
            .and_then(|s| s.name().ok().map(str::to_string))
    };
    let mut out = ModuleSymbols::default();
    let mut namespaces: HashMap<&str, u64> = HashMap::new();
    let mut strings_section = None;
    for sym in file.symbols() {
        let Ok(sym_name) = sym.name() else { continue };
        if sym.index().0 == 0 || sym_name.is_empty() || sym.kind() == SymbolKind::Section {
            continue;
        }
        // What the loader leaves alone when nobody exports it.
        let ignored = sym.is_weak() || (x86 && sym_name == "_GLOBAL_OFFSET_TABLE_");
        match sym.section() {
            SymbolSection::Undefined if !ignored => out.undefined.push(sym_name.to_string()),
            SymbolSection::Section(index) => {
                if let Some(export) = sym_name.strip_prefix("__ksymtab_") {
                    let gpl_only = match section_name(index).as_deref() {
                        Some("__ksymtab") => false,
                        Some("__ksymtab_gpl") => true,
                        _ => continue,
                    };
                    out.exports.insert(
                        export.to_string(),
                        Export {
                            module: name.to_string(),
                            gpl_only,
                            namespace: None,
                        },
                    );
                } else if let Some(export) = sym_name.strip_prefix("__kstrtabns_") {
                    namespaces.insert(export, sym.address());
                    strings_section = Some(index);
                }
            }
            _ => {}
        }
    }
    if let Some(data) = strings_section
        .and_then(|i| file.section_by_index(i).ok())
        .and_then(|s| s.data().ok())
    {
        for (export, offset) in namespaces {
            if let Some(e) = out.exports.get_mut(export) {
                e.namespace = c_string(data, offset).filter(|n| !n.is_empty());
            }
        }
    }
    out.undefined.sort();
    out.undefined.dedup();
    Ok(out)
}

/// The NUL-terminated string at `offset`.
fn c_string(data: &[u8], offset: u64) -> Option<String> {
    let rest = data.get(usize::try_from(offset).ok()?..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The kernel's `license_is_gpl_compatible` (6.1).
pub fn license_is_gpl_compatible(license: &str) -> bool {
    matches!(
        license,
        "GPL"
            | "GPL v2"
            | "GPL and additional rights"
            | "Dual BSD/GPL"
            | "Dual MIT/GPL"
            | "Dual MPL/GPL"
    )
}

/// What a module needs to load that `kernel` and the modules beside it
/// (`siblings`: every export of the modules of the same tree) do not give
/// it, one message per problem. `license` and `import_ns` are the
/// module's `.modinfo` values; `beside` shows where the siblings lie.
pub fn unresolved(
    module: &ModuleSymbols,
    license: Option<&str>,
    import_ns: &[&str],
    siblings: &HashMap<String, Export>,
    kernel: &KernelTree,
    beside: &str,
) -> Vec<String> {
    let gpl = license.is_some_and(license_is_gpl_compatible);
    let mut problems = Vec::new();
    for sym in &module.undefined {
        let Some(export) = siblings.get(sym).or_else(|| kernel.export(sym)) else {
            problems.push(format!(
                "uses symbol `{sym}`, which neither kernel {} ({}) nor any module in {beside} exports: the kernel refuses the module (Unknown symbol)",
                kernel.release, kernel.exports_from
            ));
            continue;
        };
        if export.gpl_only && !gpl {
            problems.push(format!(
                "uses symbol `{sym}`, which {} exports to GPL-compatible modules only, and its licence {} is not: the kernel refuses the module",
                export.module,
                license.map_or("(none)".to_string(), |l| format!("{l:?}"))
            ));
        }
        if let Some(ns) = &export.namespace
            && !import_ns.contains(&ns.as_str())
        {
            problems.push(format!(
                "uses symbol `{sym}` of namespace {ns}, which it does not import (MODULE_IMPORT_NS({ns})): the kernel refuses the module"
            ));
        }
    }
    let mut exported: Vec<&String> = module.exports.keys().collect();
    exported.sort();
    for sym in exported {
        if kernel.export(sym).is_some_and(Export::in_vmlinux) {
            problems.push(format!(
                "exports `{sym}`, which kernel {} already exports: the kernel refuses the module (exports duplicate symbol)",
                kernel.release
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpl_compatibility_is_the_kernels_list() {
        assert!(license_is_gpl_compatible("GPL"));
        assert!(license_is_gpl_compatible("Dual MIT/GPL"));
        assert!(!license_is_gpl_compatible("Proprietary"));
        assert!(!license_is_gpl_compatible("GPL-2.0"));
    }

    #[test]
    fn symbols_of_garbage_are_an_error_not_a_panic() {
        assert!(module_symbols(b"", "x").is_err());
        assert!(module_symbols(b"\x7fELF\x02\x01\x01", "x").is_err());
    }

    fn export(module: &str, gpl_only: bool, namespace: Option<&str>) -> Export {
        Export {
            module: module.to_string(),
            gpl_only,
            namespace: namespace.map(str::to_string),
        }
    }

    fn kernel() -> KernelTree {
        let exports = [
            ("printk", export("vmlinux", false, None)),
            ("gpl_only", export("vmlinux", true, None)),
            ("in_ns", export("drivers/cxl/core", false, Some("CXL"))),
        ];
        KernelTree {
            dir: "/k".into(),
            release: "6.1.0".into(),
            vermagic: "6.1.0 SMP ".into(),
            exports: exports.map(|(k, v)| (k.to_string(), v)).into(),
            exports_from: "/k/Module.symvers".into(),
        }
    }

    fn needs(undefined: &[&str], exports: &[&str]) -> ModuleSymbols {
        ModuleSymbols {
            undefined: undefined.iter().map(|s| s.to_string()).collect(),
            exports: exports
                .iter()
                .map(|s| (s.to_string(), export("m", false, None)))
                .collect(),
        }
    }

    #[test]
    fn symbols_resolve_against_kernel_and_siblings() {
        let k = kernel();
        let siblings = [("from_sibling".to_string(), export("s", true, None))].into();
        let m = needs(&["printk", "gpl_only", "from_sibling"], &[]);
        assert!(unresolved(&m, Some("GPL"), &[], &siblings, &k, "/d").is_empty());
        let m = needs(&["printk", "nowhere"], &[]);
        let p = unresolved(&m, Some("GPL"), &[], &siblings, &k, "/d");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("uses symbol `nowhere`, which neither kernel 6.1.0 (/k/Module.symvers) nor any module in /d exports"));
    }

    #[test]
    fn gpl_only_symbols_need_a_gpl_compatible_licence() {
        let k = kernel();
        let siblings = [("from_sibling".to_string(), export("s", true, None))].into();
        let m = needs(&["gpl_only", "from_sibling", "printk"], &[]);
        let p = unresolved(&m, Some("Proprietary"), &[], &siblings, &k, "/d");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("`gpl_only`, which vmlinux exports to GPL-compatible"));
        assert!(p[1].contains("`from_sibling`, which s exports"));
        let p = unresolved(&m, None, &[], &siblings, &k, "/d");
        assert!(p[0].contains("its licence (none) is not"), "{p:?}");
    }

    #[test]
    fn namespaced_symbols_need_their_import() {
        let k = kernel();
        let m = needs(&["in_ns"], &[]);
        let none = HashMap::new();
        let p = unresolved(&m, Some("GPL"), &["OTHER"], &none, &k, "/d");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("namespace CXL, which it does not import"));
        assert!(unresolved(&m, Some("GPL"), &["CXL"], &none, &k, "/d").is_empty());
    }

    #[test]
    fn exporting_what_vmlinux_exports_is_refused() {
        let k = kernel();
        let m = needs(&[], &["printk", "in_ns", "mine"]);
        let p = unresolved(&m, Some("GPL"), &[], &HashMap::new(), &k, "/d");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("exports `printk`, which kernel 6.1.0 already exports"));
    }

    #[test]
    fn c_strings_stop_at_nul_and_bounds() {
        assert_eq!(c_string(b"ab\0cd\0", 3).as_deref(), Some("cd"));
        assert_eq!(c_string(b"ab\0", 2).as_deref(), Some(""));
        assert_eq!(c_string(b"ab", 0), None);
        assert_eq!(c_string(b"ab\0", 9), None);
    }
}
