//! Small module stages for tests that need `.ko` files without a kernel:
//! a `variant: host` stage that compiles a relocatable ELF object with a
//! `.modinfo` section (license, name, vermagic, description) using the
//! host's cc. Not loadable; enough for images, signing and the rules.
#![allow(dead_code)] // not every test binary uses every helper

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
