//! The kernel's modules at one moment, as [`Host::snapshot`] reads them:
//! which are loaded (with their users, references, build and taint),
//! which are built in, the rest absent.
//!
//! Invariants: names are in the kernel's form (`-` as `_`); a snapshot is
//! plain data, so plans made from it are pure functions of it.
//!
//! [`Host::snapshot`]: super::Host::snapshot

use std::collections::{BTreeMap, BTreeSet};

/// The kernel's name for a module: `-` as `_` (`hello-user` is `hello_user`).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// A module in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loaded {
    pub name: String,
    /// Still initialising (`Loading` / `coming`).
    pub initialising: bool,
    /// Being unloaded (`Unloading` / `going`).
    pub going: bool,
    /// No exit function: the kernel never unloads it.
    pub permanent: bool,
    /// References held on it (its users count one each); `None` when the
    /// kernel cannot unload modules at all.
    pub refcnt: Option<u64>,
    /// The modules that use it.
    pub holders: BTreeSet<String>,
    /// `/sys/module/<name>/srcversion`, when the module has one.
    pub srcversion: Option<String>,
    /// `/sys/module/<name>/version` (`MODULE_VERSION`).
    pub version: Option<String>,
    /// `/sys/module/<name>/taint`: `O` out-of-tree, `E` unsigned or of an
    /// unknown key, ...
    pub taint: String,
}

impl Loaded {
    /// References beyond those of the modules that use it: held by
    /// processes (an open device or file), which no unload can drop.
    pub fn foreign_refs(&self) -> u64 {
        self.refcnt
            .unwrap_or(0)
            .saturating_sub(self.holders.len() as u64)
    }

    /// `loaded`, `loading` or `unloading`.
    pub fn state_word(&self) -> &'static str {
        if self.initialising {
            "loading"
        } else if self.going {
            "unloading"
        } else {
            "loaded"
        }
    }
}

/// A module's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State<'a> {
    Absent,
    /// Built into the kernel: nothing to load or unload.
    Builtin,
    Loaded(&'a Loaded),
}

/// The kernel's modules at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub loaded: BTreeMap<String, Loaded>,
    pub builtin: BTreeSet<String>,
}

impl Snapshot {
    pub fn state(&self, name: &str) -> State<'_> {
        let name = normalize(name);
        match self.loaded.get(&name) {
            Some(l) => State::Loaded(l),
            None if self.builtin.contains(&name) => State::Builtin,
            None => State::Absent,
        }
    }
}

/// One line of `/proc/modules`:
/// `name size refcnt used,by, state address [(taint)]`, where "used by" is
/// `-` for none and may hold `[permanent]` and `[unsafe]`, and refcnt is
/// `-` when the kernel cannot unload modules.
pub fn parse_proc_line(line: &str) -> Option<Loaded> {
    let mut words = line.split_whitespace();
    let name = normalize(words.next()?);
    let _size: u64 = words.next()?.parse().ok()?;
    let refcnt = match words.next()? {
        "-" => None,
        n => Some(n.parse().ok()?),
    };
    let used_by = words.next()?;
    let state = words.next()?;
    let mut m = Loaded {
        name,
        refcnt,
        initialising: state == "Loading",
        going: state == "Unloading",
        ..Loaded::default()
    };
    for user in used_by.split(',').filter(|u| !u.is_empty() && *u != "-") {
        match user {
            "[permanent]" => m.permanent = true,
            "[unsafe]" => {}
            u => {
                m.holders.insert(normalize(u));
            }
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_modules_line_gives_refcnt_users_and_state() {
        let m =
            parse_proc_line("hello_pcie 16384 1 hello_user, Live 0xffffffffc0367000 (OE)").unwrap();
        assert_eq!(m.name, "hello_pcie");
        assert_eq!(m.refcnt, Some(1));
        assert_eq!(m.holders, BTreeSet::from(["hello_user".to_string()]));
        assert!(!m.initialising && !m.going && !m.permanent);
        assert_eq!(m.foreign_refs(), 0);
        assert_eq!(m.state_word(), "loaded");

        let m = parse_proc_line("dummy 16384 0 - Live 0x0").unwrap();
        assert!(m.holders.is_empty());
        let m = parse_proc_line("x 4096 2 [permanent], Unloading 0x0").unwrap();
        assert!(m.permanent && m.going);
        assert_eq!(m.foreign_refs(), 2);
        assert_eq!(m.state_word(), "unloading");
        let m = parse_proc_line("b 16384 0 - Loading 0x0").unwrap();
        assert_eq!(m.state_word(), "loading");
        assert!(parse_proc_line("x 4096").is_none());
        assert!(parse_proc_line("x big 0 - Live 0x0").is_none());
    }
}
