//! The build matrix: which targets must be built together, per platform,
//! as cells a CI system (GitHub Actions' `strategy.matrix`) runs in
//! parallel.
//!
//! One `composer build` runs one signing session: the stages whose rendered
//! definition mentions the session directory (`defs::load::SIGNING_DIR`: a
//! kernel build that takes the session's certificate) and every stage that
//! depends on one are signed with one key, made for that build. Targets
//! that reach the same such stage must be built in one invocation, or a
//! kernel would meet modules signed with another invocation's key.
//!
//! Invariants:
//! - Per platform, targets whose signing stages (the session stages in
//!   their closure that join by themselves) overlap share a cell; the
//!   cell's kernel is the group's signing stage that no other one of the
//!   group depends on (`kernel-build`, not `kernel-prepare`).
//! - Targets that reach no signing stage share one cell per platform
//!   (`kernel: null`).
//! - Every requested target is in exactly one cell per platform (and per
//!   kernel release, when releases are given: each release is a build of
//!   its own, `kernel_release` in the cell, `-<release>` in its name).
//! - Output is deterministic: cells sorted by platform, then kernel
//!   (kernel-less cell last), targets sorted and deduplicated, JSON keys
//!   in alphabetical order.

use std::collections::BTreeSet;

use serde::{Serialize, Serializer};

use super::resolve::{Graph, GraphError};
use crate::defs::Platform;

/// One cell: a platform and the targets built together there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// `amd64` or `arm64`.
    pub arch: &'static str,
    /// The kernel (signing) stage the targets share, or `None`. A group
    /// that reaches unrelated kernels (a target depending on two) names
    /// them all, space-separated.
    pub kernel: Option<String>,
    /// The kernel release the cell builds for (`composer build
    /// --kernel-release`), or `None`.
    pub kernel_release: Option<String>,
    /// `<arch>-<kernel>` or `<arch>-no-kernel` (then `-<release>` with a
    /// kernel release): readable, and usable as a file or artifact name.
    pub name: String,
    /// `linux/amd64` or `linux/arm64`.
    pub platform: Platform,
    /// Space-separated in JSON, ready for a shell command line.
    #[serde(serialize_with = "space_separated")]
    pub targets: Vec<String>,
}

/// The matrix as GitHub Actions reads it: `{"include": [cell, ...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Matrix {
    pub include: Vec<Cell>,
}

impl Matrix {
    /// Adds one platform's cells, keeping the whole sorted.
    pub fn extend(&mut self, cells: Vec<Cell>) {
        self.include.extend(cells);
        self.include.sort_by(|a, b| {
            (a.platform, a.kernel.is_none(), &a.kernel, &a.kernel_release).cmp(&(
                b.platform,
                b.kernel.is_none(),
                &b.kernel,
                &b.kernel_release,
            ))
        });
    }

    /// The JSON text: one line (what `$GITHUB_OUTPUT` takes), or indented.
    pub fn to_json(&self, pretty: bool) -> String {
        let text = if pretty {
            serde_json::to_string_pretty(self)
        } else {
            serde_json::to_string(self)
        };
        text.expect("plain structs of strings and lists always serialize") + "\n"
    }
}

fn space_separated<S: Serializer>(targets: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&targets.join(" "))
}

/// `amd64` / `arm64`.
pub fn arch(platform: Platform) -> &'static str {
    match platform {
        Platform::LinuxAmd64 => "amd64",
        Platform::LinuxArm64 => "arm64",
    }
}

/// `cells` of one kernel release: each cell names it and its name ends in
/// it.
pub fn for_release(cells: Vec<Cell>, release: Option<&str>) -> Vec<Cell> {
    let Some(release) = release else {
        return cells;
    };
    cells
        .into_iter()
        .map(|mut c| {
            c.name = format!("{}-{release}", c.name);
            c.kernel_release = Some(release.to_string());
            c
        })
        .collect()
}

/// A group of targets and the signing stages they reach.
struct Group {
    signing: BTreeSet<String>,
    targets: BTreeSet<String>,
}

/// The cells of the graph's platform for `targets`. Fails as
/// `Graph::resolve` does (unknown target, unknown dependency, cycle).
pub fn cells(graph: &Graph<'_>, targets: &[String]) -> Result<Vec<Cell>, GraphError> {
    // The same errors, in the same order, as `composer build` gives.
    graph.resolve(targets)?;
    let platform = graph.defs.platform;
    let arch = arch(platform);
    let wanted: BTreeSet<&String> = targets.iter().collect();

    let mut groups: Vec<Group> = Vec::new();
    let mut kernel_less: BTreeSet<String> = BTreeSet::new();
    for target in wanted {
        let signing = signing_stages(graph, target)?;
        if signing.is_empty() {
            kernel_less.insert(target.clone());
            continue;
        }
        // Merge every group this target's signing stages touch.
        let mut merged = Group {
            signing,
            targets: BTreeSet::from([target.clone()]),
        };
        let mut rest = Vec::with_capacity(groups.len());
        for g in groups {
            if g.signing.is_disjoint(&merged.signing) {
                rest.push(g);
            } else {
                merged.signing.extend(g.signing);
                merged.targets.extend(g.targets);
            }
        }
        rest.push(merged);
        groups = rest;
    }

    let mut cells = Vec::with_capacity(groups.len() + 1);
    for g in groups {
        let kernels = outermost(graph, &g.signing)?;
        let kernel = kernels.join(" ");
        cells.push(Cell {
            arch,
            name: format!("{arch}-{}", kernels.join("+")),
            kernel: Some(kernel),
            kernel_release: None,
            platform,
            targets: g.targets.into_iter().collect(),
        });
    }
    if !kernel_less.is_empty() {
        cells.push(Cell {
            arch,
            kernel: None,
            kernel_release: None,
            name: format!("{arch}-no-kernel"),
            platform,
            targets: kernel_less.into_iter().collect(),
        });
    }
    let mut matrix = Matrix::default();
    matrix.extend(cells);
    Ok(matrix.include)
}

/// The stages in `target`'s closure (itself included) that join the
/// signing session by themselves.
fn signing_stages(graph: &Graph<'_>, target: &str) -> Result<BTreeSet<String>, GraphError> {
    let plan = graph.resolve(&[target.to_string()])?;
    Ok(plan
        .order
        .into_iter()
        .filter(|s| graph.get(s).is_some_and(|p| p.joins_signing_session()))
        .collect())
}

/// The signing stages of `set` that no other one of `set` depends on,
/// sorted.
fn outermost(graph: &Graph<'_>, set: &BTreeSet<String>) -> Result<Vec<String>, GraphError> {
    let mut below: BTreeSet<String> = BTreeSet::new();
    for s in set {
        let plan = graph.resolve(std::slice::from_ref(s))?;
        below.extend(plan.order.into_iter().filter(|d| d != s));
    }
    Ok(set
        .iter()
        .filter(|s| !below.contains(*s))
        .cloned()
        .collect())
}
