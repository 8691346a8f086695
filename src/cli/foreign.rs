//! `composer build`'s choice for modules no signing session signed (built
//! against a kernel the build did not make): `--signing-key FILE` signs a
//! copy of the target's tree with the user's key (`output::foreign`),
//! `--unsigned` lets them leave unsigned; without either, the build stops
//! before anything is exported and says so. Each target's choice is
//! printed, so a build log always tells how its modules were signed.

use std::path::{Path, PathBuf};

use crate::exec::Built;
use crate::output::foreign::{modules_of, signed_copy};
use crate::sign::Session;
use crate::sign::verify::Trusted;

/// How many modules an error lists before it counts the rest.
const LISTED: usize = 20;

/// A target whose modules are outside a signing session, as decided.
pub struct Foreign {
    pub target: String,
    /// The tree to validate, pack and export: the signed copy, or the
    /// cached output when unsigned.
    pub tree: PathBuf,
    /// The certificate the modules must verify against (empty: unsigned).
    pub trusted: Vec<Trusted>,
    /// The copy the gate made (moved into the output directory on export).
    pub copy: Option<PathBuf>,
}

/// What the user asked for modules outside a session.
pub struct Choice<'a> {
    pub signing_key: Option<&'a Path>,
    pub unsigned: bool,
}

/// Decides for every target of `built` outside the session that carries
/// modules; signed copies go under `staging`. On error, copies already
/// made are removed.
pub fn decide(
    choice: &Choice<'_>,
    built: &Built<'_>,
    staging: &Path,
    key: Option<&Session>,
) -> Result<Vec<Foreign>, String> {
    let mut out: Vec<Foreign> = Vec::new();
    let result = decide_each(choice, built, staging, key, &mut out);
    if result.is_err() {
        discard(&out);
    }
    result.map(|()| out)
}

fn decide_each(
    choice: &Choice<'_>,
    built: &Built<'_>,
    staging: &Path,
    key: Option<&Session>,
    out: &mut Vec<Foreign>,
) -> Result<(), String> {
    let mut missing = Vec::new();
    for (target, tree) in built.targets {
        if !built.outside_session.contains(target) {
            continue;
        }
        let mods = modules_of(tree);
        if mods.is_empty() {
            continue;
        }
        let listed = |mods: &[PathBuf]| {
            let mut lines: Vec<String> = mods
                .iter()
                .take(LISTED)
                .map(|m| format!("  /{}", m.display()))
                .collect();
            if mods.len() > LISTED {
                lines.push(format!("  ... and {} more", mods.len() - LISTED));
            }
            lines.join("\n")
        };
        if choice.unsigned {
            eprintln!(
                "{target}: {} module(s) for a kernel this build did not make: left UNSIGNED (--unsigned); they load only where the kernel does not enforce module signatures (no Secure Boot lockdown, no module.sig_enforce=1), and taint it",
                mods.len()
            );
            out.push(Foreign {
                target: target.clone(),
                tree: tree.clone(),
                trusted: Vec::new(),
                copy: None,
            });
            continue;
        }
        let (Some(path), Some(session)) = (choice.signing_key, key) else {
            missing.push(format!(
                "{target}: error[modules-signed]: {} module(s) for a kernel this build did not make, which no signing session signed:\n{}",
                mods.len(),
                listed(&mods)
            ));
            continue;
        };
        let copy = staging.join(target);
        crate::exec::fsops::remove_tree(&copy).map_err(|e| e.to_string())?;
        let n = signed_copy(tree, &copy, session).map_err(|e| format!("{target}: {e}"))?;
        eprintln!(
            "{target}: {n} module(s) for a kernel this build did not make: signed with your {} key from {} (not ephemeral; nodes must trust its certificate, e.g. enrolled with mokutil --import)",
            session.key_type().describe(),
            path.display()
        );
        out.push(Foreign {
            target: target.clone(),
            tree: copy.clone(),
            trusted: vec![Trusted::new(session.certificate().clone())],
            copy: Some(copy),
        });
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}\n  choose how they leave: --signing-key FILE (a PEM file with a PKCS#8 key and its certificate: the key your nodes trust, e.g. enrolled with mokutil) or --unsigned (they then load only where the kernel does not enforce signatures, and taint it)",
        missing.join("\n")
    ))
}

/// Removes the signed copies (a later check failed: nothing is exported).
pub fn discard(foreign: &[Foreign]) {
    for f in foreign {
        if let Some(copy) = &f.copy {
            let _ = crate::exec::fsops::remove_tree(copy);
        }
    }
}
