//! A kernel under QEMU (TCG) for the node's tests (Debian's cloud kernel
//! in `kmod_load.rs` and `kmod_node.rs`, the demo kernel in
//! `kernel/node.rs`): an initramfs of a directory (module trees, images),
//! busybox, composer with the shared libraries it needs (`ldd`) and an
//! /init that runs a scenario of named steps (`step NAME COMMAND...`),
//! printing each one's output, exit status and the modules loaded after
//! it; the steps as the console showed them.
#![allow(dead_code)] // not every test binary uses every helper

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{self, run};

const PREFIX: &str = "KMOD-LOAD: ";

/// The guest's /init begins with this: `step NAME COMMAND...` runs a
/// command, printing its output, exit status and the modules loaded after
/// it (oldest first).
const INIT_HEAD: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
exec </dev/console >/dev/console 2>&1
echo 1 >/proc/sys/kernel/printk
step() {
  name=$1
  shift
  echo "KMOD-LOAD: begin $name"
  "$@" >/tmp/out 2>&1
  rc=$?
  while IFS= read -r line; do echo "KMOD-LOAD: out $name: $line"; done </tmp/out
  mods=""
  for m in $(tac /proc/modules | cut -d' ' -f1); do mods="$mods $m"; done
  echo "KMOD-LOAD: end $name rc=$rc modules:$mods"
}
"#;

/// What the /init ends with.
const INIT_TAIL: &str = r#"echo "KMOD-LOAD: done"
sync
poweroff -f
"#;

/// Copies `file` (following links) to the same path under `root`.
fn copy_in(root: &Path, file: &Path) {
    let dest = root.join(file.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// The shared libraries and the loader `binary` needs, by `ldd`.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = run(Command::new("ldd").arg(binary));
    let libs: Vec<PathBuf> = out
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect();
    assert!(
        libs.iter()
            .any(|l| l.to_string_lossy().contains("ld-linux")),
        "no loader in ldd's output: {out}"
    );
    libs
}

/// The initramfs: the trees at `/<name>`, busybox, composer (stripped)
/// and its libraries, the /init above.
fn initramfs(root: &Path, scenario: &str) -> PathBuf {
    let busybox = PathBuf::from("/bin/busybox");
    let static_bb = Command::new("ldd").arg(&busybox).output().unwrap();
    assert!(
        !static_bb.status.success(),
        "{}: dynamically linked; the initramfs needs busybox-static",
        busybox.display()
    );
    copy_in(root, &busybox);
    let composer = Path::new(env!("CARGO_BIN_EXE_composer"));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    run(Command::new("strip")
        .arg("-o")
        .arg(root.join("bin/composer"))
        .arg(composer));
    for lib in libraries(composer) {
        copy_in(root, &lib);
    }
    std::fs::write(
        root.join("init"),
        format!("{INIT_HEAD}{scenario}{INIT_TAIL}"),
    )
    .unwrap();
    run(Command::new("chmod").arg("755").arg(root.join("init")));
    let image = root.with_extension("initramfs.gz");
    common::sh(
        root,
        &format!(
            "find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R +0:+0 --quiet | gzip -1 > {}",
            image.display()
        ),
    );
    image
}

/// The steps of a scenario, by name.
pub type Steps = BTreeMap<String, GuestStep>;

/// One step of the guest's scenario.
#[derive(Debug, Default)]
pub struct GuestStep {
    pub rc: Option<i32>,
    pub out: Vec<String>,
    pub modules: Vec<String>,
}

impl GuestStep {
    pub fn text(&self) -> String {
        self.out.join("\n")
    }
}

/// Boots the x86_64 `kernel` image with `root` as the initramfs running
/// `scenario` (shell lines of `step`s); the steps by name.
pub fn boot(
    root: &Path,
    kernel: &Path,
    append: &str,
    scenario: &str,
) -> BTreeMap<String, GuestStep> {
    let image = initramfs(root, scenario);
    let out = Command::new("timeout")
        .args(["-k", "10", "900", "qemu-system-x86_64", "-accel", "tcg"])
        .args(["-m", "512", "-smp", "1", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(&image)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 {append}"))
        .stdin(Stdio::null())
        .output()
        .expect("qemu-system-x86_64 (apt-get install qemu-system-x86)");
    let _ = std::fs::remove_file(&image);
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let tail: Vec<&str> = console.lines().rev().take(60).collect();
    let marks: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix(PREFIX))
        .collect();
    assert!(
        marks.contains(&"done"),
        "the guest did not finish (QEMU: {}):\n{}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let mut steps: BTreeMap<String, GuestStep> = BTreeMap::new();
    for m in marks {
        if let Some(rest) = m.strip_prefix("out ") {
            let (name, line) = rest.split_once(": ").unwrap_or((rest, ""));
            steps.entry(name.into()).or_default().out.push(line.into());
        } else if let Some(rest) = m.strip_prefix("end ") {
            let (head, mods) = rest.split_once(" modules:").unwrap();
            let (name, rc) = head.split_once(" rc=").unwrap();
            let s = steps.entry(name.into()).or_default();
            s.rc = rc.parse().ok();
            s.modules = mods.split_whitespace().map(str::to_string).collect();
        }
    }
    // The transcript, shown when a test fails (or with --nocapture).
    for (name, s) in &steps {
        eprintln!(
            "--- {name}: exit {:?}; modules after: {}",
            s.rc,
            s.modules.join(" ")
        );
        for l in &s.out {
            eprintln!("    {l}");
        }
    }
    steps
}

pub fn step<'a>(steps: &'a BTreeMap<String, GuestStep>, name: &str) -> &'a GuestStep {
    steps
        .get(name)
        .unwrap_or_else(|| panic!("no step {name}: {steps:#?}"))
}

/// The step exited with `rc`, and said every one of `said`.
pub fn expect(steps: &BTreeMap<String, GuestStep>, name: &str, rc: i32, said: &[&str]) {
    let s = step(steps, name);
    assert_eq!(s.rc, Some(rc), "{name}: {s:#?}");
    for w in said {
        assert!(
            s.text().contains(w),
            "{name}: expected {w:?} in:\n{}",
            s.text()
        );
    }
}

pub fn ours(s: &GuestStep) -> Vec<&str> {
    s.modules
        .iter()
        .map(String::as_str)
        .filter(|m| ["hello_pcie", "hello_user", "dummy"].contains(m))
        .collect()
}
