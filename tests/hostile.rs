//! Hostile input: every broken definition ends in a clear `file:line:col`
//! error and exit code 1, never a panic, and loading still reports the
//! other problems of the tree.

mod common;

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

fn tree(files: &[(&str, &[u8])]) -> TempDir {
    common::tree(files)
}

const PKGFILE: &str = "format: v1alpha2\nvars:\n  VERSION: 1.0.0\n";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn composer(dir: &Path, args: &[&str]) -> Run {
    let root = dir.to_string_lossy();
    let mut all = args.to_vec();
    all.extend(["--root", &root]);
    let out = common::composer(dir, &all);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn validate(dir: &TempDir) -> Run {
    composer(dir.path(), &["validate"])
}

fn assert_error(run: &Run, at: &str, words: &str) {
    assert_eq!(run.code, 1, "stderr: {}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains(at) && l.contains(words))
        .unwrap_or_else(|| panic!("no `{at}` … `{words}` in:\n{}", run.stderr));
    assert!(line.contains("error"), "{line}");
}

const OK_PKG: &str = "name: a\nvariant: scratch\n";

#[test]
fn dependency_cycle_is_reported_with_its_path() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        (
            "a/pkg.yaml",
            b"name: a\nvariant: scratch\ndependencies:\n  - stage: b\n",
        ),
        (
            "b/pkg.yaml",
            b"name: b\nvariant: scratch\ndependencies:\n  - stage: c\n",
        ),
        (
            "c/pkg.yaml",
            b"name: c\nvariant: scratch\ndependencies:\n  - stage: a\n",
        ),
    ]);
    let run = validate(&dir);
    assert_error(&run, "a/pkg.yaml:1:7", "dependency cycle: a -> b -> c -> a");
    assert_eq!(
        run.stderr.matches("dependency cycle").count(),
        1,
        "{}",
        run.stderr
    );
    let graph = composer(dir.path(), &["graph", "b"]);
    assert_eq!(graph.code, 1);
    assert!(
        graph.stderr.contains("dependency cycle: b -> c -> a -> b"),
        "{}",
        graph.stderr
    );
}

#[test]
fn duplicate_stage_names_name_both_files() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        ("one/pkg.yaml", OK_PKG.as_bytes()),
        ("two/pkg.yaml", OK_PKG.as_bytes()),
    ]);
    let run = validate(&dir);
    assert_error(&run, "two/pkg.yaml:1:7", "duplicate stage name `a`");
    assert!(run.stderr.contains("one/pkg.yaml:1:7"), "{}", run.stderr);
}

#[test]
fn unknown_keys_get_a_did_you_mean_and_all_are_reported() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        (
            "a/pkg.yaml",
            b"name: a\nvariant: scratch\ndependancies: []\nsteps:\n  - enviroment: {}\n    build: [make]\nfinalize:\n  - from: /\n    too: /\n",
        ),
    ]);
    let run = validate(&dir);
    assert_error(
        &run,
        "a/pkg.yaml:3:1",
        "dependancies: unknown key (did you mean `dependencies`?)",
    );
    assert_error(&run, "a/pkg.yaml:5:5", "steps[0].enviroment: unknown key");
    assert_error(
        &run,
        "a/pkg.yaml:9:5",
        "finalize[0].too: unknown key (did you mean `to`?)",
    );
    assert!(run.stderr.contains("3 errors"), "{}", run.stderr);
}

#[test]
fn checksums_of_the_wrong_length_are_errors() {
    let short = "a".repeat(63);
    let long = "b".repeat(129);
    let text = format!(
        "name: a\nvariant: scratch\nsteps:\n  - sources:\n      - url: https://example.com/x.tar\n        destination: x.tar\n        sha256: {short}\n        sha512: {long}\nfinalize:\n  - from: /\n    to: /\n"
    );
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        ("a/pkg.yaml", text.as_bytes()),
    ]);
    let run = validate(&dir);
    assert_error(
        &run,
        "a/pkg.yaml:7:17",
        "steps[0].sources[0].sha256: expected 64 hex characters, got 63",
    );
    assert_error(
        &run,
        "a/pkg.yaml:8:17",
        "steps[0].sources[0].sha512: expected 128 hex characters, got 129",
    );
}

#[test]
fn non_hex_checksum_is_an_error() {
    let bad = format!("{}z", "a".repeat(63));
    let text = format!(
        "name: a\nvariant: scratch\nsteps:\n  - sources:\n      - url: https://example.com/x\n        destination: x\n        sha256: {bad}\n        sha512: {}\nfinalize: [{{from: /, to: /}}]\n",
        "c".repeat(128)
    );
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        ("a/pkg.yaml", text.as_bytes()),
    ]);
    assert_error(&validate(&dir), "a/pkg.yaml:7:17", "non-hex `z`");
}

#[test]
fn template_syntax_error_points_into_the_source() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        (
            "a/pkg.yaml",
            b"name: a\nvariant: scratch\nshell: {{ if .ARCH }/bin/sh\n",
        ),
    ]);
    assert_error(&validate(&dir), "a/pkg.yaml:3:", "template syntax");
}

#[test]
fn unclosed_template_block_is_an_error_at_its_opening_action() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        (
            "a/pkg.yaml",
            b"name: a\nvariant: scratch\nshell: {{ if eq .X \"1\" }}/bin/sh\n",
        ),
    ]);
    let run = composer(dir.path(), &["render", "a"]);
    assert_error(
        &run,
        "a/pkg.yaml:3:8",
        "unexpected EOF: `{{ if }}` has no matching `{{ end }}`",
    );
    assert_eq!(run.stdout, "", "nothing rendered");
    assert_error(&validate(&dir), "a/pkg.yaml:3:8", "unexpected EOF");
}

#[test]
fn unbalanced_blocks_in_vars_and_tmpl_files_are_errors() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        ("vars.yaml", b"A: 1\n{{ range .L }}\nB: 2\n".as_slice()),
        ("a/pkg.yaml", OK_PKG.as_bytes()),
        (
            "a/files/conf.tmpl",
            b"x = 1\n{{ end }}\ny = {{ .VERSION }}\n".as_slice(),
        ),
        (
            "a/files/other.tmpl",
            b"{{ with .VERSION }}v{{ end }}\n{{ else }}\n".as_slice(),
        ),
        ("a/files/define.tmpl", b"{{ define \"x\" }}a\n".as_slice()),
    ]);
    let run = validate(&dir);
    assert_error(
        &run,
        "vars.yaml:2:1",
        "`{{ range }}` has no matching `{{ end }}`",
    );
    assert_error(&run, "conf.tmpl:2:1", "unexpected `{{ end }}`");
    assert_error(
        &run,
        "other.tmpl:2:1",
        "unexpected `{{ else }}` outside `{{ if }}`, `{{ with }}` or `{{ range }}`",
    );
    assert_error(&run, "define.tmpl:1:1", "`{{ define }}` has no matching");
}

#[test]
fn eval_refuses_an_unclosed_block() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        ("a/pkg.yaml", OK_PKG.as_bytes()),
    ]);
    let run = composer(
        dir.path(),
        &["eval", "-t", "a", "{{ with .VERSION }}{{ . }}"],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("unexpected EOF"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn unknown_template_function_is_an_error() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        (
            "a/pkg.yaml",
            b"name: a\nvariant: scratch\nshell: {{ nosuchfunc .ARCH }}\n",
        ),
    ]);
    assert_error(&validate(&dir), "a/pkg.yaml:3:", "nosuchfunc");
}

#[test]
fn undefined_variable_warns_and_strict_makes_it_an_error() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        (
            "a/pkg.yaml",
            b"name: a\nvariant: scratch\nshell: /bin/{{ .VERSON }}\n",
        ),
    ]);
    let run = validate(&dir);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("a/pkg.yaml:3:16: warning: undefined variable `.VERSON` renders as `<no value>` (did you mean `.VERSION`?)"),
        "{}",
        run.stderr
    );
    let strict = composer(dir.path(), &["validate", "--strict"]);
    assert_error(&strict, "a/pkg.yaml:3:16", "undefined variable `.VERSON`");
}

#[test]
fn non_utf8_file_is_reported_at_the_bad_byte() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        ("a/pkg.yaml", b"name: a\nvariant: scr\xffatch\n"),
    ]);
    assert_error(&validate(&dir), "a/pkg.yaml:2:13", "not UTF-8");
}

#[test]
fn empty_files_are_clear_errors() {
    let dir = tree(&[("Pkgfile", b""), ("a/pkg.yaml", b""), ("b/vars.yaml", b"")]);
    let run = validate(&dir);
    assert_error(&run, "Pkgfile:1:1", "empty Pkgfile");
    assert_error(&run, "a/pkg.yaml:1:1", "empty pkg.yaml");
}

#[test]
fn huge_vars_file_is_refused_quickly() {
    let mut big = Vec::with_capacity(50 << 20);
    while big.len() < 50 << 20 {
        big.extend_from_slice(b"SOME_VARIABLE_NAME_THAT_IS_LONG: some value that is also long\n");
    }
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        ("vars.yaml", &big),
        ("a/pkg.yaml", OK_PKG.as_bytes()),
    ]);
    assert_error(&validate(&dir), "vars.yaml:1:1", "over the 16 MiB limit");
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        (
            "a/pkg.yaml",
            b"name: a\nvariant: scratch\ndependencies: [\n  - stage: b\n",
        ),
    ]);
    assert_error(&validate(&dir), "a/pkg.yaml:", "invalid YAML");
}

#[test]
fn unknown_stage_dependency_suggests_the_close_name() {
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        ("kernel/pkg.yaml", b"name: kernel\nvariant: scratch\n"),
        (
            "m/pkg.yaml",
            b"name: m\nvariant: scratch\ndependencies:\n  - stage: kernal\n",
        ),
    ]);
    assert_error(
        &validate(&dir),
        "m/pkg.yaml:4:12",
        "unknown stage `kernal` (did you mean `kernel`?)",
    );
}

#[test]
fn missing_required_fields_are_each_reported() {
    let dir = tree(&[
        ("Pkgfile", b"vars: {}\n"),
        ("a/pkg.yaml", b"variant: scratch\n"),
        ("b/pkg.yaml", b"name: b\nsteps:\n  - build: [make]\n"),
        ("c/pkg.yaml", b"name: c\nvariant: debian\n"),
    ]);
    let run = validate(&dir);
    assert_error(&run, "Pkgfile:1:1", "missing required field `format`");
    assert_error(&run, "a/pkg.yaml:1:1", "missing required field `name`");
    assert_error(&run, "b/pkg.yaml:1:1", "missing required field `variant`");
    assert_error(&run, "b/pkg.yaml:1:1", "no `finalize`");
    assert_error(&run, "c/pkg.yaml:2:10", "unknown value `debian`");
}

#[test]
fn wrong_types_are_reported_with_the_field_path() {
    let dir = tree(&[
        ("Pkgfile", b"format: v1alpha2\nvars:\n  LIST: [1, 2]\n"),
        (
            "a/pkg.yaml",
            b"name: a\nvariant: scratch\ndependencies:\n  - stage: [x]\n    runtime: maybe\nsteps: {}\n",
        ),
    ]);
    let run = validate(&dir);
    assert_error(
        &run,
        "Pkgfile:3:9",
        "vars.LIST: expected a string, got a list",
    );
    assert_error(
        &run,
        "a/pkg.yaml:4:12",
        "dependencies[0].stage: expected a string, got a list",
    );
    assert_error(
        &run,
        "a/pkg.yaml:5:14",
        "dependencies[0].runtime: expected true or false",
    );
    assert_error(
        &run,
        "a/pkg.yaml:6:8",
        "steps: expected a list, got a mapping",
    );
}

#[test]
fn unsupported_pkgfile_format_is_an_error() {
    let dir = tree(&[
        ("Pkgfile", b"format: v1alpha1\n"),
        ("a/pkg.yaml", OK_PKG.as_bytes()),
    ]);
    assert_error(
        &validate(&dir),
        "Pkgfile:1:9",
        "unsupported format `v1alpha1`",
    );
}

#[test]
fn yaml_errors_after_rendering_point_at_source_lines() {
    // The if-block shifts nothing in the output, but the bad key sits after
    // a templated line: its line must be the source line.
    let dir = tree(&[
        ("Pkgfile", PKGFILE.as_bytes()),
        (
            "a/pkg.yaml",
            b"name: a\n{{ if eq .ARCH \"x86_64\" }}\nvariant: scratch\n{{ else }}\nvariant: alpine\n{{ end }}\nshel: /bin/sh\n",
        ),
    ]);
    assert_error(&validate(&dir), "a/pkg.yaml:7:1", "shel: unknown key");
}

#[test]
fn missing_root_is_a_user_error() {
    let dir = tree(&[("Pkgfile", PKGFILE.as_bytes())]);
    let run = Command::new(env!("CARGO_BIN_EXE_composer"))
        .args(["validate", "--root"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("is not a directory"));
}

#[test]
fn deep_directory_nesting_does_not_crash_discovery() {
    let mut path = String::new();
    for _ in 0..200 {
        path.push_str("d/");
    }
    path.push_str("pkg.yaml");
    let dir = tree(&[("Pkgfile", PKGFILE.as_bytes()), (&path, OK_PKG.as_bytes())]);
    let run = validate(&dir);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty());
}
