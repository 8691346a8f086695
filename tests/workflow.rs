//! The release workflow (.github/workflows/release.yml) against the binary:
//! every composer command it runs exists and takes the options it passes,
//! every `matrix.*` field it reads is one `composer matrix` prints, and
//! the build job's matrix is the plan job's output.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::composer;
use saphyr::{LoadableYamlNode, Yaml};

fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn workflow_text() -> String {
    std::fs::read_to_string(project_dir().join(".github/workflows/release.yml")).unwrap()
}

fn workflow() -> Yaml<'static> {
    let text: &'static str = Box::leak(workflow_text().into_boxed_str());
    Yaml::load_from_str(text)
        .expect("release.yml is YAML")
        .into_iter()
        .next()
        .expect("one document")
}

fn get<'a, 'b>(node: &'a Yaml<'b>, key: &str) -> &'a Yaml<'b> {
    node.as_mapping_get(key)
        .unwrap_or_else(|| panic!("no `{key}` in {node:?}"))
}

/// Every `run:` script of every job, continuation lines joined.
fn run_scripts(wf: &Yaml<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let jobs = get(wf, "jobs").as_mapping().expect("jobs is a mapping");
    for (name, job) in jobs {
        let steps = get(job, "steps").as_sequence().expect("steps is a list");
        for step in steps {
            if let Some(run) = step.as_mapping_get("run").and_then(|r| r.as_str()) {
                out.push((name.as_str().unwrap().to_string(), run.replace("\\\n", " ")));
            }
        }
    }
    out
}

/// A composer invocation: subcommand and the options written out.
#[derive(Debug)]
struct Invocation {
    line: String,
    subcommand: String,
    options: Vec<String>,
}

fn invocations(script: &str) -> Vec<Invocation> {
    let start = regex::Regex::new(r"(?:^|[\s;|&(])composer\s+").unwrap();
    let mut out = Vec::new();
    for line in script.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for m in start.find_iter(line) {
            let rest = &line[m.end()..];
            let end = rest
                .find([')', '|', ';', '>'])
                .into_iter()
                .chain(rest.find("&&"))
                .min()
                .unwrap_or(rest.len());
            let mut words = rest[..end].split_whitespace();
            let mut subcommand = None;
            let mut options = Vec::new();
            while let Some(w) = words.next() {
                if w.starts_with('-') {
                    let name = w.split('=').next().unwrap().to_string();
                    if name == "--root" && !w.contains('=') {
                        words.next();
                    }
                    options.push(name);
                } else if subcommand.is_none() {
                    subcommand = Some(w.to_string());
                }
            }
            out.push(Invocation {
                line: line.trim().to_string(),
                subcommand: subcommand.unwrap_or_default(),
                options,
            });
        }
    }
    out
}

#[test]
fn workflow_runs_only_composer_commands_and_options_that_exist() {
    let wf = workflow();
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = BTreeSet::new();
    for (job, script) in run_scripts(&wf) {
        for inv in invocations(&script) {
            let out = composer(tmp.path(), &[&inv.subcommand, "--help"]);
            assert!(
                out.status.success() && !inv.subcommand.is_empty(),
                "job {job}: `{}`: composer has no command `{}`: {}",
                inv.line,
                inv.subcommand,
                String::from_utf8_lossy(&out.stderr)
            );
            let help = String::from_utf8_lossy(&out.stdout);
            seen.insert(inv.subcommand.clone());
            // A command that says it is not implemented yet takes any
            // arguments: only its existence is checked.
            if help.contains("not implemented") {
                continue;
            }
            for opt in &inv.options {
                let known = if opt.starts_with("--") {
                    help.contains(&format!("{opt} ")) || help.contains(&format!("{opt}\n"))
                } else {
                    help.contains(&format!("{opt}, "))
                };
                assert!(
                    known,
                    "job {job}: `{}`: `composer {}` has no option {opt}",
                    inv.line, inv.subcommand
                );
            }
        }
    }
    // The parse found what the workflow is about.
    for cmd in ["matrix", "build", "verify", "eval", "image-installer"] {
        assert!(
            seen.contains(cmd),
            "no `composer {cmd}` found; saw {seen:?}"
        );
    }
}

#[test]
fn invocation_parse_catches_an_unknown_command_or_option() {
    let inv = invocations(
        "x=$(composer eval -t hello '{{ .VERSION }}' --platform a)\n# composer nothing\ncomposer --root pkgs buidl --pussh x | tee y",
    );
    assert_eq!(inv.len(), 2, "{inv:?}");
    assert_eq!(inv[0].subcommand, "eval");
    assert_eq!(inv[0].options, ["-t", "--platform"]);
    assert_eq!(inv[1].subcommand, "buidl");
    assert_eq!(inv[1].options, ["--root", "--pussh"]);
    let tmp = tempfile::tempdir().unwrap();
    assert!(!composer(tmp.path(), &["buidl", "--help"]).status.success());
}

#[test]
fn workflow_matrix_fields_are_ones_composer_matrix_prints() {
    let out = composer(
        &project_dir(),
        &[
            "--root",
            "pkgs",
            "--root",
            "extensions",
            "matrix",
            "kernel",
            "hello-module",
            "hello",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cell = m["include"][0].as_object().expect("a cell");
    let fields = regex::Regex::new(r"(?:^|[^.\w-])matrix\.([A-Za-z_][A-Za-z0-9_-]*)").unwrap();
    let text = workflow_text();
    let used: BTreeSet<&str> = fields
        .captures_iter(&text)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert!(
        used.contains("targets") && used.contains("platform"),
        "{used:?}"
    );
    for f in used {
        assert!(
            cell.contains_key(f),
            "release.yml reads matrix.{f}; cells have {cell:?}"
        );
    }
}

#[test]
fn build_job_matrix_is_the_plan_jobs_output() {
    let wf = workflow();
    let jobs = get(&wf, "jobs");
    let plan = get(jobs, "plan");
    let build = get(jobs, "build");
    let output = get(get(plan, "outputs"), "matrix").as_str().unwrap();
    assert!(output.contains("steps.matrix.outputs.matrix"), "{output}");
    let matrix = get(get(build, "strategy"), "matrix").as_str().unwrap();
    assert_eq!(matrix, "${{ fromJSON(needs.plan.outputs.matrix) }}");
    assert_eq!(get(build, "needs").as_str(), Some("plan"));
    let plan_runs: String = run_scripts(&wf)
        .into_iter()
        .filter(|(job, _)| job == "plan")
        .map(|(_, s)| s)
        .collect();
    assert!(
        plan_runs.contains("composer matrix") && plan_runs.contains("$GITHUB_OUTPUT"),
        "{plan_runs}"
    );
}

/// The workflow's `env` value `key`.
fn env_value(wf: &Yaml<'_>, key: &str) -> String {
    get(get(wf, "env"), key)
        .as_str()
        .unwrap_or_else(|| panic!("env.{key} is not a string"))
        .to_string()
}

#[test]
fn workflow_targets_share_one_cell_per_platform_in_the_demo_tree() {
    let wf = workflow();
    let targets = env_value(&wf, "TARGETS");
    let mut args = vec![
        "--root",
        "pkgs",
        "--root",
        "extensions",
        "matrix",
        "--platform",
        "linux/amd64,linux/arm64",
    ];
    args.extend(targets.split_whitespace());
    let out = composer(&project_dir(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for platform in ["linux/amd64", "linux/arm64"] {
        let whole = m["include"].as_array().unwrap().iter().any(|c| {
            let have: BTreeSet<&str> = c["targets"].as_str().unwrap().split(' ').collect();
            c["platform"] == platform && targets.split_whitespace().all(|t| have.contains(t))
        });
        assert!(whole, "{platform}: no cell holds all of `{targets}`: {m}");
    }
}

#[test]
fn workflow_installs_packages_the_makefile_knows() {
    let makefile = std::fs::read_to_string(project_dir().join("Makefile")).unwrap();
    let start = makefile
        .find("APT_PACKAGES :=")
        .expect("APT_PACKAGES in the Makefile");
    let mut known = BTreeSet::new();
    for line in makefile[start + "APT_PACKAGES :=".len()..].lines() {
        let continued = line.trim_end().ends_with('\\');
        known.extend(
            line.trim_end_matches('\\')
                .split_whitespace()
                .map(str::to_string),
        );
        if !continued {
            break;
        }
    }
    let wf = workflow();
    for p in env_value(&wf, "APT_PACKAGES").split_whitespace() {
        assert!(
            known.contains(p) || ["curl", "ca-certificates", "git"].contains(&p),
            "release.yml installs `{p}`, which the Makefile's APT_PACKAGES does not have: {known:?}"
        );
    }
}

#[test]
fn kmods_job_matrix_is_one_cell_per_kernel_release_from_its_plan() {
    let wf = workflow();
    let jobs = get(&wf, "jobs");
    let kmods = get(jobs, "kmods");
    let matrix = get(get(kmods, "strategy"), "matrix").as_str().unwrap();
    assert_eq!(matrix, "${{ fromJSON(needs.kmm-plan.outputs.matrix) }}");
    assert_eq!(get(kmods, "needs").as_str(), Some("kmm-plan"));
    let scripts = run_scripts(&wf);
    let plan: String = scripts
        .iter()
        .filter(|(job, _)| job == "kmm-plan")
        .map(|(_, s)| s.as_str())
        .collect();
    assert!(
        plan.contains("scripts/debian-kernel.sh releases")
            && plan.contains("composer matrix --kernel-release"),
        "{plan}"
    );
    let build: String = scripts
        .iter()
        .filter(|(job, _)| job == "kmods")
        .map(|(_, s)| s.as_str())
        .collect();
    for needed in [
        "--kernel-release \"${release}\"",
        "--format kmm",
        "--skip-existing",
        "--signing-key",
        "--unsigned",
    ] {
        assert!(build.contains(needed), "kmods job lacks {needed}: {build}");
    }
}

#[test]
fn every_build_cell_reads_and_writes_the_shared_stage_cache() {
    let wf = workflow();
    let builds: Vec<(String, String)> = run_scripts(&wf)
        .into_iter()
        .filter(|(_, script)| script.contains("composer build --platform"))
        .filter(|(_, script)| !script.contains("--push"))
        .collect();
    assert_eq!(builds.len(), 1, "the build cell's build step: {builds:?}");
    let (step, script) = &builds[0];
    assert!(
        script.contains(r#"cache="ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/composer-cache""#),
        "{step}: the project's registry namespace (lowercase for ghcr.io)"
    );
    assert!(
        script.contains(r#"--cache-from "${cache}" --cache-to "${cache}""#),
        "{step}: reads and writes the same cache"
    );
    assert!(
        script.contains("REGISTRY_AUTH_FILE") && script.contains("trap 'rm -f"),
        "{step}: credentials for the push, removed afterwards"
    );
}
