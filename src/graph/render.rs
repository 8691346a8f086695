//! Renders a resolved plan as a text tree, Graphviz DOT, or JSON.
//!
//! Invariant: output is deterministic (stages in plan order, dependencies in
//! file order), so it can be diffed and snapshot-tested.

use std::collections::BTreeSet;
use std::fmt::Write;

use serde::Serialize;

use super::resolve::{Graph, Input, Plan};
use crate::defs::schema::DependencyKind;
use crate::diag::display_path;

/// A tree per target; a stage already shown is marked `(*)` and not
/// expanded again; runtime dependencies are marked `[runtime]`.
pub fn text(graph: &Graph<'_>, plan: &Plan) -> String {
    let mut out = String::new();
    let mut shown = BTreeSet::new();
    for target in &plan.targets {
        let _ = writeln!(out, "{target}");
        tree(graph, target, "", &mut shown, &mut out);
    }
    out
}

fn tree(
    graph: &Graph<'_>,
    name: &str,
    prefix: &str,
    shown: &mut BTreeSet<String>,
    out: &mut String,
) {
    let Some(pkg) = graph.get(name) else { return };
    if !shown.insert(name.to_string()) {
        return;
    }
    let deps = &pkg.pkg.dependencies;
    for (i, d) in deps.iter().enumerate() {
        let last = i + 1 == deps.len();
        let (branch, indent) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        let mut label = match &d.kind {
            DependencyKind::Stage(s) => s.clone(),
            DependencyKind::Image(img) => format!("image {img}"),
        };
        if d.from != "/" || d.to != "/" {
            let _ = write!(label, " ({} -> {})", d.from, d.to);
        }
        if d.runtime {
            label.push_str(" [runtime]");
        }
        let expanded = matches!(&d.kind, DependencyKind::Stage(s) if shown.contains(s));
        if expanded {
            label.push_str(" (*)");
        }
        let _ = writeln!(out, "{prefix}{branch}{label}");
        if let DependencyKind::Stage(s) = &d.kind
            && !expanded
        {
            tree(graph, s, &format!("{prefix}{indent}"), shown, out);
        }
    }
}

/// Graphviz DOT: an edge from each dependency to its dependant, as bldr
/// draws it; images as boxes, runtime edges bold.
pub fn dot(graph: &Graph<'_>, plan: &Plan) -> String {
    let mut out = String::from("digraph composer {\n  rankdir=LR;\n  node [shape=ellipse];\n");
    let mut images = BTreeSet::new();
    for name in &plan.order {
        let _ = writeln!(out, "  {};", quote(name));
    }
    for name in &plan.order {
        let Some(pkg) = graph.get(name) else { continue };
        for d in &pkg.pkg.dependencies {
            let (src, is_image) = match &d.kind {
                DependencyKind::Stage(s) => (s.clone(), false),
                DependencyKind::Image(i) => (i.split('@').next().unwrap_or(i).to_string(), true),
            };
            if is_image && images.insert(src.clone()) {
                let _ = writeln!(
                    out,
                    "  {} [shape=box, style=filled, fillcolor=lemonchiffon];",
                    quote(&src)
                );
            }
            let style = if d.runtime {
                " [style=bold, color=forestgreen]"
            } else {
                ""
            };
            let _ = writeln!(out, "  {} -> {}{style};", quote(&src), quote(name));
        }
    }
    out.push_str("}\n");
    out
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[derive(Serialize)]
struct JsonStage<'a> {
    name: &'a str,
    file: String,
    variant: crate::defs::schema::Variant,
    dependencies: Vec<JsonDep<'a>>,
    /// Everything merged into the stage's filesystem, runtime closure
    /// included, in merge order.
    inputs: Vec<Input>,
}

#[derive(Serialize)]
struct JsonDep<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    from: &'a str,
    to: &'a str,
    runtime: bool,
}

#[derive(Serialize)]
struct JsonGraph<'a> {
    platform: String,
    targets: &'a [String],
    order: &'a [String],
    stages: Vec<JsonStage<'a>>,
}

/// The plan as JSON: targets, build order and each stage's inputs.
pub fn json(graph: &Graph<'_>, plan: &Plan) -> String {
    let stages = plan
        .order
        .iter()
        .filter_map(|name| graph.get(name))
        .map(|p| JsonStage {
            name: &p.pkg.name.value,
            file: display_path(&p.file).display().to_string(),
            variant: p.pkg.variant,
            dependencies: p
                .pkg
                .dependencies
                .iter()
                .map(|d| JsonDep {
                    stage: match &d.kind {
                        DependencyKind::Stage(s) => Some(s),
                        DependencyKind::Image(_) => None,
                    },
                    image: match &d.kind {
                        DependencyKind::Image(i) => Some(i),
                        DependencyKind::Stage(_) => None,
                    },
                    from: &d.from,
                    to: &d.to,
                    runtime: d.runtime,
                })
                .collect(),
            inputs: graph.inputs(p),
        })
        .collect();
    let doc = JsonGraph {
        platform: graph.defs.platform.to_string(),
        targets: &plan.targets,
        order: &plan.order,
        stages,
    };
    serde_json::to_string_pretty(&doc)
        .expect("plain structs of strings, bools and lists always serialize")
        + "\n"
}
