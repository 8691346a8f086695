//! What `--push` does about images a registry already holds under the tags
//! composer pushes to (`build`, and `image-installer` for its one tag).
//!
//! - `--skip-existing` ([`skip_existing`], before the build): every
//!   target's tag is told from the definitions (`output::tag`; with
//!   `--format kmm`, the `--kernel-release`), the registry is asked for
//!   it, and the targets whose tag exists leave the plan, as KMM builds a
//!   kmod image only when its tag is missing. Nothing has run yet: no
//!   source fetched, no signing key made.
//! - No silent overwrite ([`before_push`], in the export gate, after the
//!   images are packed and before anything is exported, written or
//!   pushed): a tag naming another manifest is refused unless
//!   `--overwrite-existing`, every tag is checked before the first push,
//!   and a tag naming this very manifest is not pushed again.
//!
//! Invariants: a registry that cannot be asked is an error naming it,
//! never taken as "absent"; a target skipped on a told tag is checked,
//! when built, to carry exactly that tag. The check and the push are two
//! requests: a tag pushed by someone else in between is replaced (the
//! distribution API has no conditional write).

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use oci_spec::image::Digest;

use super::images::{ImageArgs, Pending};
use super::{CliError, RenderOpts};
use crate::defs::Definitions;
use crate::graph::Plan;
use crate::oci::reference::{RegistryRef, parse_registry};
use crate::oci::registry::{RegistryOptions, manifest_digest};
use crate::output::tag::extension_tag;

#[derive(Args, Debug)]
pub struct ExistingArgs {
    /// With --push: before anything runs, ask the registry for every
    /// target's tag and build only the targets whose image is not there
    /// yet. The tag must be known before building: with --format kmm it is
    /// --kernel-release; a system extension's is the version in its
    /// rendered manifest.yaml.tmpl.
    #[arg(long)]
    pub skip_existing: bool,
    /// With --push: replace a tag the registry holds with another image.
    /// Without it a push to such a tag fails, before anything is written
    /// or pushed.
    #[arg(long)]
    pub overwrite_existing: bool,
}

/// What `--skip-existing` left to build.
pub struct Skipping {
    /// The plan for the targets still to build; `None` when every target
    /// was skipped (nothing is to run).
    pub plan: Option<Plan>,
    /// The tag each checked target's image must carry.
    pub told: BTreeMap<String, String>,
}

/// `REGISTRY/PATH/<target>:<tag>`, where `build --push REGISTRY/PATH`
/// puts a target's image.
pub fn push_reference(prefix: &str, target: &str, tag: &str) -> Result<RegistryRef, String> {
    parse_registry(&format!("{}/{target}:{tag}", prefix.trim_end_matches('/')))
}

fn registry_options(insecure: bool) -> RegistryOptions {
    RegistryOptions {
        insecure,
        ..RegistryOptions::default()
    }
}

/// Checks the flags, and with `--skip-existing` takes the targets whose
/// image is in the registry out of `plan` (each one reported on stderr).
pub fn skip_existing(
    args: &ExistingArgs,
    images: &ImageArgs,
    opts: &RenderOpts,
    defs: &Definitions,
    plan: Plan,
) -> Result<Skipping, CliError> {
    let needs_push =
        |flag: &str, why: &str| CliError::user(format!("{flag} needs --push REGISTRY/PATH: {why}"));
    if args.overwrite_existing && images.push.is_none() {
        return Err(needs_push(
            "--overwrite-existing",
            "it lets a push replace a tag the registry holds",
        ));
    }
    if !args.skip_existing {
        return Ok(Skipping {
            plan: Some(plan),
            told: BTreeMap::new(),
        });
    }
    let Some(prefix) = images.push.as_deref() else {
        return Err(needs_push(
            "--skip-existing",
            "it asks that registry which targets' images exist",
        ));
    };
    let told = told_tags(images, opts, defs, &plan.targets)?;
    let reg = registry_options(images.insecure);
    let mut build = Vec::new();
    for (target, tag) in &told {
        let reference = push_reference(prefix, target, tag)
            .map_err(|e| CliError::user(format!("--push {prefix}: {e}")))?;
        match lookup(&reference, &reg)? {
            Some(digest) => eprintln!("skipped {target}: {reference} exists ({digest})"),
            None => build.push(target.clone()),
        }
    }
    if build.is_empty() {
        eprintln!(
            "built 0 stage(s): every target's image is in the registry ({} skipped)",
            plan.targets.len()
        );
        return Ok(Skipping { plan: None, told });
    }
    let (_, plan) = super::resolve_targets(defs, &build)?;
    // What the built images are checked against: the targets left to build.
    let mut told = told;
    told.retain(|target, _| build.contains(target));
    Ok(Skipping {
        plan: Some(plan),
        told,
    })
}

/// The tag of every target's image, or one error naming each target whose
/// tag cannot be known before building.
fn told_tags(
    images: &ImageArgs,
    opts: &RenderOpts,
    defs: &Definitions,
    targets: &[String],
) -> Result<BTreeMap<String, String>, CliError> {
    match images.format.as_str() {
        "rootfs" => {
            return Err(CliError::user(
                "--skip-existing: --format rootfs makes no images, so there is nothing to look for in the registry",
            ));
        }
        "kmm" => {
            let release = opts.kernel_release.as_ref().ok_or_else(|| {
                CliError::user(
                    "--skip-existing with --format kmm needs --kernel-release RELEASE: a kmod image is tagged with the kernel release its modules are for, and that tag must be known before building to ask the registry for it",
                )
            })?;
            return Ok(targets
                .iter()
                .map(|t| (t.clone(), release.clone()))
                .collect());
        }
        _ => {}
    }
    let mut tags = BTreeMap::new();
    let mut unknown = Vec::new();
    for target in targets {
        let Some(pkg) = defs.find(target) else {
            unknown.push(format!("  {target}: not in the definitions"));
            continue;
        };
        match extension_tag(pkg) {
            Ok(tag) => {
                tags.insert(target.clone(), tag);
            }
            Err(e) => unknown.push(format!("  {e}")),
        }
    }
    if !unknown.is_empty() {
        return Err(CliError::user(format!(
            "--skip-existing: the tag of {} target(s) cannot be known before building; leave them out, or build modules with --format kmm --kernel-release RELEASE\n{}",
            unknown.len(),
            unknown.join("\n")
        )));
    }
    Ok(tags)
}

/// The manifest `reference` names in the registry; an error names the
/// registry that could not be asked.
fn lookup(reference: &RegistryRef, opts: &RegistryOptions) -> Result<Option<Digest>, CliError> {
    manifest_digest(reference, opts).map_err(|e| {
        CliError::User(anyhow::Error::new(e).context(format!(
            "cannot ask the registry {} whether {reference} exists",
            reference.registry
        )))
    })
}

/// What a push would do to a tag.
enum Push {
    /// The tag does not exist.
    New,
    /// The tag names this very manifest: nothing to push.
    Present,
    /// The tag names another manifest, and `--overwrite-existing` allows
    /// replacing it.
    Replace(Digest),
}

/// Compares the registry's manifest for `reference` with `ours`; the
/// error is the refusal to overwrite, or why the registry could not say.
fn compare(
    reference: &RegistryRef,
    ours: &Digest,
    overwrite: bool,
    opts: &RegistryOptions,
) -> Result<Push, String> {
    let theirs = manifest_digest(reference, opts).map_err(|e| {
        format!(
            "cannot ask the registry {} whether {reference} exists: {e}",
            reference.registry
        )
    })?;
    match theirs {
        None => Ok(Push::New),
        Some(d) if d == *ours => Ok(Push::Present),
        Some(d) if overwrite => Ok(Push::Replace(d)),
        Some(d) => Err(format!(
            "{reference} exists with {d}; this build made {ours}: not overwritten (--overwrite-existing replaces it)"
        )),
    }
}

/// The export gate's registry check: each packed image carries the tag
/// `--skip-existing` looked for, and (with `--push`) no tag is to be
/// overwritten without `--overwrite-existing`. Marks the images the
/// registry already has in `pending.in_registry`. Every problem is
/// reported at once; any one means nothing is exported or pushed.
pub fn before_push(
    args: &ExistingArgs,
    images: &ImageArgs,
    told: &BTreeMap<String, String>,
    pending: &mut Pending,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (target, tag) in told {
        if !pending.packed.iter().any(|(t, _)| t == target) {
            problems.push(format!(
                "{target}: --skip-existing looked for its image tagged {tag}, but the build made no image of it"
            ));
        }
    }
    for (target, p) in &pending.packed {
        if let Some(tag) = told.get(target).filter(|t| **t != p.tag) {
            problems.push(format!(
                "{target}: its image is tagged {}, not {tag} as --skip-existing looked for{}",
                p.tag,
                if images.format == "kmm" {
                    " (its modules are for another kernel than --kernel-release)"
                } else {
                    ""
                }
            ));
        }
    }
    let mut present = BTreeSet::new();
    if let Some(prefix) = &images.push {
        let reg = registry_options(images.insecure);
        for (target, p) in &pending.packed {
            let reference = push_reference(prefix, target, &p.tag)
                .map_err(|e| format!("--push {prefix}: {e}"))?;
            match compare(&reference, p.top.digest(), args.overwrite_existing, &reg) {
                Ok(Push::New) => {}
                Ok(Push::Present) => {
                    present.insert(target.clone());
                }
                Ok(Push::Replace(old)) => eprintln!(
                    "{target}: {reference} holds {old}; replacing it with {} (--overwrite-existing)",
                    p.top.digest()
                ),
                Err(e) => problems.push(e),
            }
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "nothing exported, written or pushed:\n{}",
            problems
                .iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    pending.in_registry = present;
    Ok(())
}

/// `image-installer --push`: whether the installer image is to be pushed
/// (`false` when the tag already names it); an error when the tag names
/// another image and `overwrite` is off.
pub fn before_installer_push(
    reference: &RegistryRef,
    ours: &Digest,
    overwrite: bool,
    insecure: bool,
) -> Result<bool, CliError> {
    match compare(reference, ours, overwrite, &registry_options(insecure)) {
        Ok(Push::New) => Ok(true),
        Ok(Push::Present) => Ok(false),
        Ok(Push::Replace(old)) => {
            eprintln!("{reference} holds {old}; replacing it with {ours} (--overwrite-existing)");
            Ok(true)
        }
        Err(e) => Err(CliError::user(format!("nothing written or pushed: {e}"))),
    }
}
