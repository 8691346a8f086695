//! Name resolution and ordering of stages.
//!
//! Invariants:
//! - Stage names are unique across all roots; a duplicate is reported with
//!   both files, and the first one found is the one used.
//! - A stage's inputs are, in order, each direct dependency followed by that
//!   dependency's `runtime: true` closure (transitively over runtime edges
//!   only), deduplicated by (what, `to`) with the first occurrence winning:
//!   bldr's merge order.
//! - A `Plan` lists every stage needed for the targets, dependencies before
//!   dependants; a cycle is an error that names the whole path.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use crate::defs::schema::{Dependency, DependencyKind};
use crate::defs::{Definitions, Package};
use crate::diag::{Diagnostic, Report, Span, suggest};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("unknown target `{name}`{}", hint(.suggestion))]
    UnknownTarget {
        name: String,
        suggestion: Option<String>,
    },
    #[error("{span}: unknown stage `{name}` in the dependencies of `{of}`{}", hint(.suggestion))]
    UnknownStage {
        name: String,
        of: String,
        span: Span,
        suggestion: Option<String>,
    },
    #[error("dependency cycle: {}", .path.join(" -> "))]
    Cycle { path: Vec<String> },
}

fn hint(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// An input merged into a stage's filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Input {
    /// `stage:NAME` or `image:REF`.
    pub what: String,
    pub from: String,
    pub to: String,
    /// Reached through a dependency's `runtime: true` closure rather than
    /// named directly.
    pub via_runtime: bool,
}

/// The stages needed for some targets, in build order.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub targets: Vec<String>,
    /// Dependencies before dependants.
    pub order: Vec<String>,
}

/// Stages indexed by name.
pub struct Graph<'d> {
    pub defs: &'d Definitions,
    index: HashMap<&'d str, usize>,
}

impl<'d> Graph<'d> {
    /// Indexes the stages, reporting duplicate names and dependencies on
    /// stages that do not exist.
    pub fn new(defs: &'d Definitions, report: &mut Report) -> Self {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, p) in defs.packages.iter().enumerate() {
            let name = p.pkg.name.value.as_str();
            if let Some(&first) = index.get(name) {
                let other = &defs.packages[first];
                report.push(Diagnostic::error(
                    p.pkg.name.span.clone(),
                    "name",
                    format!(
                        "duplicate stage name `{name}`: also defined at {}",
                        other.pkg.name.span
                    ),
                ));
            } else {
                index.insert(name, i);
            }
        }
        let graph = Graph { defs, index };
        for p in &defs.packages {
            check_certified_trees(p, report);
        }
        for p in &defs.packages {
            for (dep, d) in p.pkg.stage_deps() {
                if !graph.index.contains_key(dep) {
                    let mut diag = Diagnostic::error(
                        d.span.clone(),
                        "dependencies",
                        format!("unknown stage `{dep}`"),
                    );
                    if dep.contains("<no value>") {
                        diag = diag.with_hint(
                            "the name comes from an undefined template variable; pass it with --build-arg",
                        );
                    } else if let Some(s) = graph.suggest(dep) {
                        diag = diag.with_hint(format!("did you mean `{s}`?"));
                    }
                    report.push(diag);
                }
            }
        }
        graph
    }

    pub fn get(&self, name: &str) -> Option<&'d Package> {
        self.index.get(name).map(|&i| &self.defs.packages[i])
    }

    /// Every stage name, sorted.
    pub fn names(&self) -> Vec<&'d str> {
        let mut names: Vec<&str> = self.index.keys().copied().collect();
        names.sort_unstable();
        names
    }

    fn suggest(&self, name: &str) -> Option<String> {
        suggest(name, self.index.keys().copied()).map(str::to_string)
    }

    fn package(
        &self,
        name: &str,
        of: Option<(&str, &Dependency)>,
    ) -> Result<&'d Package, GraphError> {
        self.get(name).ok_or_else(|| match of {
            Some((of, dep)) => GraphError::UnknownStage {
                name: name.to_string(),
                of: of.to_string(),
                span: dep.span.clone(),
                suggestion: self.suggest(name),
            },
            None => GraphError::UnknownTarget {
                name: name.to_string(),
                suggestion: self.suggest(name),
            },
        })
    }

    /// The stages needed for `targets`, dependencies first; and the session
    /// stages that certify a kernel tree the plan builds on:
    /// modules built against a kernel compiled with no key are signed in
    /// the session of the stage that writes the session's certificate into
    /// that kernel, so that stage is part of the plan (not a target).
    pub fn resolve(&self, targets: &[String]) -> Result<Plan, GraphError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for t in targets {
            let pkg = self.package(t, None)?;
            let mut stack = Vec::new();
            self.visit(pkg, &mut stack, &mut done, &mut order)?;
        }
        loop {
            let missing: Vec<&'d Package> = self
                .certifiers(&order)
                .into_iter()
                .filter(|c| !done.contains(c.pkg.name.value.as_str()))
                .collect();
            if missing.is_empty() {
                break;
            }
            for pkg in missing {
                self.visit(pkg, &mut Vec::new(), &mut done, &mut order)?;
            }
        }
        Ok(Plan {
            targets: targets.to_vec(),
            order,
        })
    }

    /// The session stages that certify a kernel tree (`SESSION_KERNEL_TREE`)
    /// which a stage of `order` builds on.
    fn certifiers(&self, order: &[String]) -> Vec<&'d Package> {
        let used: BTreeSet<&str> = order
            .iter()
            .filter_map(|n| self.get(n))
            .flat_map(|p| p.pkg.stage_deps().map(|(d, _)| d).collect::<Vec<_>>())
            .collect();
        self.defs
            .packages
            .iter()
            .filter(|s| s.certified_trees().iter().any(|t| used.contains(t)))
            .collect()
    }

    fn visit(
        &self,
        pkg: &'d Package,
        stack: &mut Vec<&'d str>,
        done: &mut BTreeSet<&'d str>,
        order: &mut Vec<String>,
    ) -> Result<(), GraphError> {
        let name = pkg.pkg.name.value.as_str();
        if done.contains(name) {
            return Ok(());
        }
        if let Some(pos) = stack.iter().position(|s| *s == name) {
            let mut path: Vec<String> = stack[pos..].iter().map(|s| s.to_string()).collect();
            path.push(name.to_string());
            return Err(GraphError::Cycle { path });
        }
        stack.push(name);
        for (dep, d) in pkg.pkg.stage_deps() {
            let dep_pkg = self.package(dep, Some((name, d)))?;
            self.visit(dep_pkg, stack, done, order)?;
        }
        stack.pop();
        done.insert(name);
        order.push(name.to_string());
        Ok(())
    }

    /// Checks every stage for cycles (for `validate`), reporting each cycle
    /// once at the stage where it was entered.
    pub fn check_all(&self, report: &mut Report) {
        let mut seen_cycles = BTreeSet::new();
        for name in self.names() {
            if let Err(GraphError::Cycle { path }) = self.resolve(&[name.to_string()]) {
                let mut key: Vec<String> = path[..path.len() - 1].to_vec();
                key.sort();
                if seen_cycles.insert(key)
                    && let Some(p) = self.get(&path[0])
                {
                    report.push(Diagnostic::error(
                        p.pkg.name.span.clone(),
                        "dependencies",
                        format!("dependency cycle: {}", path.join(" -> ")),
                    ));
                }
            }
        }
    }

    /// What is merged into `pkg`'s filesystem, in merge order.
    pub fn inputs(&self, pkg: &Package) -> Vec<Input> {
        let mut out: Vec<Input> = Vec::new();
        let push = |out: &mut Vec<Input>, d: &Dependency, via_runtime| {
            let what = match &d.kind {
                DependencyKind::Stage(s) => format!("stage:{s}"),
                DependencyKind::Image(i) => format!("image:{i}"),
            };
            if !out.iter().any(|i| i.what == what && i.to == d.to) {
                out.push(Input {
                    what,
                    from: d.from.clone(),
                    to: d.to.clone(),
                    via_runtime,
                });
            }
        };
        for d in &pkg.pkg.dependencies {
            push(&mut out, d, false);
            if let DependencyKind::Stage(s) = &d.kind {
                let mut visiting = Vec::new();
                for r in self.runtime_closure(s, &mut visiting) {
                    push(&mut out, r, true);
                }
            }
        }
        out
    }

    /// The `runtime: true` dependencies of `name`, transitively over runtime
    /// edges. `visiting` guards against runtime cycles.
    fn runtime_closure(&self, name: &str, visiting: &mut Vec<String>) -> Vec<&'d Dependency> {
        let Some(pkg) = self.get(name) else {
            return Vec::new();
        };
        if visiting.iter().any(|v| v == name) {
            return Vec::new();
        }
        visiting.push(name.to_string());
        let mut out = Vec::new();
        for d in pkg.pkg.dependencies.iter().filter(|d| d.runtime) {
            out.push(d);
            if let DependencyKind::Stage(s) = &d.kind {
                out.extend(self.runtime_closure(s, visiting));
            }
        }
        visiting.pop();
        out
    }
}

/// A `SESSION_KERNEL_TREE` must name a stage dependency of a stage that
/// uses the signing session: otherwise no stage would join the session
/// through it, and its modules would leave unsigned or be refused.
fn check_certified_trees(p: &Package, report: &mut Report) {
    let named: Vec<&str> = p
        .pkg
        .steps
        .iter()
        .flat_map(|s| s.env.iter())
        .filter(|(k, _)| k == crate::defs::load::SESSION_KERNEL_TREE)
        .map(|(_, v)| v.as_str())
        .collect();
    let name = &p.pkg.name;
    for tree in named {
        let problem = if !p.joins_signing_session() {
            format!(
                "SESSION_KERNEL_TREE names `{tree}`, but `{}` does not use the signing session (its definition never mentions {}): it cannot certify a kernel tree",
                name.value,
                crate::defs::load::SIGNING_DIR
            )
        } else if !p.pkg.stage_deps().any(|(d, _)| d == tree) {
            format!(
                "SESSION_KERNEL_TREE names `{tree}`, which is not a stage dependency of `{}`: the stages built on it would not join the session",
                name.value
            )
        } else {
            continue;
        };
        report.push(Diagnostic::error(name.span.clone(), "env", problem));
    }
}
