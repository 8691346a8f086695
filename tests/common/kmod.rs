//! Small module stages for tests that need `.ko` files without a kernel:
//! a `variant: host` stage that compiles a relocatable ELF object with a
//! `.modinfo` section (license, name, vermagic, description) using the
//! host's cc. Not loadable; enough for images, signing and the rules.
//! And the key a user signs such modules with (`user_key`).
#![allow(dead_code)] // not every test binary uses every helper

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A stage `name` that compiles one module for `release` (a template:
/// `{{ .KERNEL_FULL_VERSION }}` takes `--kernel-release`) whose
/// `.modinfo` description is `greeting`.
pub fn kmod_pkg(name: &str, release: &str, greeting: &str) -> String {
    let module = name.replace('-', "_");
    let info = |i: usize, entry: &str| {
        format!(
            "        static const char m{i}[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"{entry}\";\n"
        )
    };
    format!(
        "name: {name}\nvariant: host\nshell: /bin/bash\nsteps:\n  - install:\n      - |\n        dir=/out/usr/lib/modules/{release}/extra\n        mkdir -p \"$dir\"\n        cat > /tmp/build/m.c <<'EOF'\n        int init_module(void) {{ return 0; }}\n{}{}{}{}        EOF\n        cc -c -O0 /tmp/build/m.c -o \"$dir/{module}.ko\"\nfinalize:\n  - from: /out\n    to: /\n",
        info(0, "license=GPL"),
        info(1, &format!("name={module}")),
        info(2, &format!("vermagic={release} SMP mod_unload")),
        info(3, &format!("description={greeting}")),
    )
}

/// A PEM file with an ECDSA P-384 PKCS#8 key and its self-signed
/// certificate (made by openssl, as a user makes a MOK), and the
/// certificate alone.
pub fn user_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let crt = dir.join(format!("{name}.crt"));
    super::run(
        Command::new("openssl")
            .args(["req", "-new", "-x509", "-nodes", "-days", "30"])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"])
            .args(["-subj", &format!("/CN=composer test {name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt),
    );
    let pem = dir.join(format!("{name}.pem"));
    let mut both = fs::read(&key).unwrap();
    both.extend(fs::read(&crt).unwrap());
    fs::write(&pem, both).unwrap();
    (pem, crt)
}
