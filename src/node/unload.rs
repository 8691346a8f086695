//! Unloading modules, users before what they use: the named modules and
//! every loaded module of the index that depends on one of them. A module
//! used by a module outside that set, holding references no module
//! explains (a process has it open), without an exit function, or going
//! away right now is refused before anything is unloaded, naming what
//! holds it. `--replace-in-tree` unloads with the same rules.
//!
//! A name the index does not list is unloaded when the kernel has it (the
//! image that brought it was removed); otherwise it is a typo, answered
//! with the closest name.
//!
//! Invariant: [`plan_unload`] is a pure function of the index and a
//! [`Snapshot`]; only [`unload`] calls the kernel, in the planned order,
//! and stops at the first refusal. Unloading what is not loaded is not an
//! error.

use std::collections::BTreeSet;

use super::Host;
use super::index::Index;
use super::load::{Done, LoadError};
use super::snapshot::{Snapshot, State, normalize};
use super::syscall::{self, Outcome};

/// The modules named to unload, and the loaded modules of the index that
/// need them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnloadPlan {
    /// In order, dependants first.
    pub remove: Vec<String>,
    /// Named, but not in the kernel.
    pub not_loaded: Vec<String>,
}

/// The steps of unloading `names` and the loaded modules of `index` that
/// depend on them.
pub fn plan_unload(
    index: &Index,
    snap: &Snapshot,
    names: &[String],
) -> Result<UnloadPlan, LoadError> {
    let mut plan = UnloadPlan::default();
    let mut set = BTreeSet::new();
    for n in names {
        let n = normalize(n);
        let state = snap.state(&n);
        // A module the kernel has is unloaded even when no index lists it
        // any more (its image removed); otherwise an unknown name is a typo.
        if !index.has(&n) && !matches!(state, State::Loaded(_)) {
            return Err(index.unknown(&n, snap.loaded.keys().map(String::as_str)));
        }
        match state {
            State::Absent => plan.not_loaded.push(n),
            State::Builtin => {
                return Err(LoadError::Builtin {
                    name: n,
                    what: "unloaded",
                });
            }
            State::Loaded(_) => {
                for d in index.dependants(&n) {
                    if matches!(snap.state(d), State::Loaded(_)) {
                        set.insert(d.to_string());
                    }
                }
                set.insert(n);
            }
        }
    }
    plan.remove = unload_order(snap, &set)?;
    Ok(plan)
}

/// `set` (loaded modules) in an order the kernel can unload them, users
/// before what they use; refused when anything outside the set holds one.
pub(super) fn unload_order(
    snap: &Snapshot,
    set: &BTreeSet<String>,
) -> Result<Vec<String>, LoadError> {
    let loaded = |n: &String| snap.loaded.get(n).expect("the set holds loaded modules");
    for name in set {
        let m = loaded(name);
        let outside: Vec<String> = m
            .holders
            .iter()
            .filter(|h| !set.contains(*h))
            .cloned()
            .collect();
        if !outside.is_empty() {
            return Err(LoadError::Held {
                name: name.clone(),
                holders: outside,
                set: set.iter().cloned().collect(),
            });
        }
        if m.permanent {
            return Err(LoadError::Permanent { name: name.clone() });
        }
        if m.going {
            return Err(LoadError::Going { name: name.clone() });
        }
        if m.foreign_refs() > 0 {
            return Err(LoadError::Busy {
                name: name.clone(),
                refs: m.foreign_refs(),
            });
        }
    }
    let mut left: BTreeSet<String> = set.clone();
    let mut order = Vec::new();
    while !left.is_empty() {
        let free: Vec<String> = left
            .iter()
            .filter(|n| loaded(n).holders.iter().all(|h| !left.contains(h)))
            .cloned()
            .collect();
        if free.is_empty() {
            // Modules holding each other: the kernel would refuse too.
            let name = left.iter().next().cloned().unwrap_or_default();
            let holders = loaded(&name).holders.iter().cloned().collect();
            return Err(LoadError::Held {
                name,
                holders,
                set: set.iter().cloned().collect(),
            });
        }
        for n in free {
            left.remove(&n);
            order.push(n);
        }
    }
    Ok(order)
}

/// Carries out an unload plan on `host`.
pub fn unload(
    host: &Host,
    plan: &UnloadPlan,
    report: &mut dyn FnMut(&Done),
) -> Result<(), LoadError> {
    for name in &plan.not_loaded {
        report(&Done::NotLoaded {
            name: name.clone(),
            replaced: false,
        });
    }
    remove_all(host, &plan.remove, false, report)
}

pub(super) fn remove_all(
    host: &Host,
    names: &[String],
    replaced: bool,
    report: &mut dyn FnMut(&Done),
) -> Result<(), LoadError> {
    let kmsg = host.path("/dev/kmsg");
    for name in names {
        let outcome = syscall::remove(name, &kmsg).map_err(|source| LoadError::Unload {
            name: name.clone(),
            source,
        })?;
        let name = name.clone();
        report(&match outcome {
            Outcome::Done => Done::Unloaded { name, replaced },
            Outcome::AlreadyThere => Done::NotLoaded { name, replaced },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::node::snapshot::parse_proc_line;

    fn index() -> Index {
        let dir = Path::new("/opt/lib/modules/6.1.0");
        Index::parse(
            dir,
            &dir.join("modules.dep"),
            "extra/hello_pcie.ko:\nextra/hello_user.ko: extra/hello_pcie.ko\n",
            Path::new("/opt"),
        )
        .unwrap()
    }

    /// The kernel's state from `/proc/modules` lines.
    fn snap(lines: &[&str]) -> Snapshot {
        let mut s = Snapshot::default();
        for l in lines {
            let m = parse_proc_line(l).unwrap();
            s.loaded.insert(m.name.clone(), m);
        }
        s
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unload_takes_the_dependants_of_the_index_first() {
        let s = snap(&[
            "hello_user 16384 0 - Live 0x0 (OE)",
            "hello_pcie 16384 1 hello_user, Live 0x0 (OE)",
        ]);
        let p = plan_unload(&index(), &s, &names(&["hello_pcie"])).unwrap();
        assert_eq!(p.remove, ["hello_user", "hello_pcie"]);
        assert!(p.not_loaded.is_empty());
    }

    #[test]
    fn unload_refuses_a_module_held_from_outside_naming_the_holder() {
        let s = snap(&[
            "other_drv 16384 0 - Live 0x0 (OE)",
            "hello_pcie 16384 1 other_drv, Live 0x0 (OE)",
        ]);
        let e = plan_unload(&index(), &s, &names(&["hello_pcie"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hello_pcie is in use by other_drv, not among the modules to unload (hello_pcie); unload it first"
        );
    }

    #[test]
    fn unload_refuses_a_module_a_process_holds() {
        let s = snap(&["hello_pcie 16384 2 - Live 0x0 (OE)"]);
        let e = plan_unload(&index(), &s, &names(&["hello_pcie"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hello_pcie is in use by 2 reference(s) no module explains (a process holds it: an open device or file)"
        );
    }

    #[test]
    fn unload_of_what_is_not_loaded_is_not_an_error() {
        let p = plan_unload(&index(), &snap(&[]), &names(&["hello-user"])).unwrap();
        assert_eq!(p.not_loaded, ["hello_user"]);
        assert!(p.remove.is_empty());
        // A name the index does not know is a typo, not "not loaded".
        let e = plan_unload(&index(), &snap(&[]), &names(&["hello_usr"])).unwrap_err();
        assert!(e.to_string().ends_with("did you mean `hello_user`?"), "{e}");
    }

    #[test]
    fn a_loaded_module_no_index_lists_is_unloaded_and_its_holders_refused() {
        let s = snap(&["gone 16384 0 - Live 0x0 (OE)"]);
        let p = plan_unload(&index(), &s, &names(&["gone"])).unwrap();
        assert_eq!(p.remove, ["gone"]);
        let s = snap(&[
            "user 16384 0 - Live 0x0 (OE)",
            "gone 16384 1 user, Live 0x0 (OE)",
        ]);
        let e = plan_unload(&index(), &s, &names(&["gone"])).unwrap_err();
        assert!(e.to_string().starts_with("gone is in use by user"), "{e}");
    }

    #[test]
    fn without_any_index_the_kernels_list_is_enough_and_typos_are_answered() {
        let none = Index::merge(Vec::new());
        let s = snap(&["hello_pcie 16384 0 - Live 0x0 (OE)"]);
        let p = plan_unload(&none, &s, &names(&["hello-pcie"])).unwrap();
        assert_eq!(p.remove, ["hello_pcie"]);
        let e = plan_unload(&none, &s, &names(&["hello_pci"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no module `hello_pci`: the kernel has none of that name, and no modules.dep is there for its release; did you mean `hello_pcie`?"
        );
    }

    #[test]
    fn unload_refuses_builtin_and_permanent_modules() {
        // An image module the running kernel has built in.
        let mut s = snap(&[]);
        s.builtin.insert("hello_user".into());
        let e = plan_unload(&index(), &s, &names(&["hello_user"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hello_user is built into the kernel: it cannot be unloaded"
        );
        let s = snap(&["hello_pcie 16384 0 [permanent], Live 0x0"]);
        let e = plan_unload(&index(), &s, &names(&["hello_pcie"])).unwrap_err();
        assert!(e.to_string().contains("no exit function"), "{e}");
    }

    #[test]
    fn unload_order_puts_every_user_before_what_it_uses() {
        // c uses b and a; b uses a: c, then b, then a, whatever the names.
        let s = snap(&[
            "c 1 0 - Live 0x0",
            "b 1 1 c, Live 0x0",
            "a 1 2 b,c, Live 0x0",
        ]);
        let set: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(unload_order(&s, &set).unwrap(), ["c", "b", "a"]);
    }
}
