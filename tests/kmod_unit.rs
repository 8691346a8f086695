//! `composer kmod unit`: the systemd unit that installs and loads an image
//! at boot and unloads it on stop. `systemd-analyze verify` accepts it (as
//! the library makes it and as `composer kmod unit -o` writes it), and
//! systemd's own parser (`systemd --test`, its dump of the unit) reads
//! `ExecStart` with `${KERNEL_FULL_VERSION}` kept for composer.

mod common;

use std::path::Path;
use std::process::Command;

use common::run;

fn unit_text(reference: &str) -> String {
    let opts = composer::node::unit::UnitOptions {
        composer: env!("CARGO_BIN_EXE_composer").into(),
        install_args: vec!["--param".into(), "hello_pcie.greeting=hi there".into()],
        unload_args: vec![],
    };
    composer::node::unit::unit("hello", reference, &opts).unwrap()
}

const REF: &str = "oci-archive:/images/kmod-${KERNEL_FULL_VERSION}.tar";

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("composer-kmod-hello.service");
    std::fs::write(&file, unit_text(REF)).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{said}");
    assert!(!said.contains("composer-kmod-hello"), "{said}");

    // The check can fail: a command that does not exist is refused.
    let broken = unit_text(REF).replace(env!("CARGO_BIN_EXE_composer"), "/nonexistent/composer");
    std::fs::write(&file, broken).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// systemd's own reading of the unit (`systemd --test` dumps every unit it
/// loaded, refusing to run as root: run as nobody).
#[test]
fn systemd_reads_the_exec_lines_as_composer_must_get_them() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    std::fs::write(units.join("composer-kmod-hello.service"), unit_text(REF)).unwrap();
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(dir.path()));
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/lib/systemd/systemd", "--test", "--system"])
        .arg("--unit=composer-kmod-hello.service")
        .arg("--log-target=console")
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
        .output()
        .expect("/lib/systemd/systemd (apt-get install systemd)");
    let dump = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{dump}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let start = dump
        .split("-> Unit composer-kmod-hello.service:")
        .nth(1)
        .and_then(|u| u.split("-> ExecStart:").nth(1))
        .and_then(|e| {
            e.lines()
                .find_map(|l| l.trim().strip_prefix("Command Line: "))
        })
        .unwrap_or_else(|| panic!("no ExecStart in systemd's dump:\n{dump}"));
    // systemd keeps `$$` until it runs the command, where it becomes `$`
    // (systemd.service(5)); its dump quotes each `$` as `\$`.
    assert_eq!(
        start,
        format!(
            "{} kmod install \"oci-archive:/images/kmod-\\$\\${{KERNEL_FULL_VERSION}}.tar\" --name hello --load --param \"hello_pcie.greeting=hi there\"",
            env!("CARGO_BIN_EXE_composer")
        )
    );
}

/// systemd-analyze's verdict on `file`: success, and what it said.
fn analyze(file: &Path) -> (bool, String) {
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(file)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), said)
}

#[test]
fn kmod_unit_writes_a_unit_that_systemd_analyze_verify_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let o = common::composer(
        dir.path(),
        &[
            "kmod",
            "unit",
            "hello",
            REF,
            "-o",
            ".",
            "--cert",
            "mok.pem",
            "--param",
            "hello-pcie.greeting=hi there",
            "--state-dir",
            "state",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("systemctl enable --now composer-kmod-hello.service"),
        "{err}"
    );
    let file = dir.path().join("composer-kmod-hello.service");
    let text = std::fs::read_to_string(&file).unwrap();
    let composer = env!("CARGO_BIN_EXE_composer");
    assert!(
        text.contains(&format!(
            "ExecStart={composer} kmod install oci-archive:/images/kmod-$${{KERNEL_FULL_VERSION}}.tar --name hello --load --cert {d}/mok.pem --state-dir {d}/state --param \"hello_pcie.greeting=hi there\"\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ExecStop={composer} kmod unload --image hello --state-dir {d}/state\n"
        )),
        "{text}"
    );
    let (ok, said) = analyze(&file);
    assert!(ok && !said.contains("composer-kmod-hello"), "{said}");

    // Printed without -o, the same unit.
    let o = common::composer(
        dir.path(),
        &[
            "kmod",
            "unit",
            "hello",
            REF,
            "--cert",
            "mok.pem",
            "--param",
            "hello_pcie.greeting=hi there",
            "--state-dir",
            "state",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), text);

    // A local reference is made absolute (the unit runs from /); one
    // install could not read is refused when the unit is written.
    let o = common::composer(
        dir.path(),
        &[
            "kmod",
            "unit",
            "hello",
            "oci-archive:images/kmod-${KERNEL_FULL_VERSION}.tar:v1",
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!(
            " kmod install oci-archive:{d}/images/kmod-$${{KERNEL_FULL_VERSION}}.tar:v1 --name hello --load\n"
        )),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = common::composer(
        dir.path(),
        &[
            "kmod",
            "unit",
            "hello",
            "oci-archive:kmod-${KERNEL}.tar",
            "-o",
            "y.service",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown variable ${KERNEL}"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!dir.path().join("y.service").exists());

    // A name neither systemd nor an image can take: nothing written.
    let o = common::composer(dir.path(), &["kmod", "unit", "a+b", REF, "-o", "x.service"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("`a+b` cannot name the unit and its image"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!dir.path().join("x.service").exists());
}
