# composer — developer entry points. The README shows the two that matter:
#   make demo   set up this machine and run composer on the bundled demo tree
#   make test   install what the tests need and run them all

SHELL := /bin/bash
CARGO ?= cargo
COMPOSER := target/release/composer
LINUX_SOURCE := /usr/src/linux-source-6.1.tar.xz
APT_PACKAGES := linux-source-6.1 hyperfine

# The demo kernel's source checksums come from the installed Debian package,
# which changes when Debian updates it: computed here, never hard-coded.
LINUX_ARGS = --build-arg LINUX_SOURCE_SHA256=$$(sha256sum $(LINUX_SOURCE) | cut -d' ' -f1) \
             --build-arg LINUX_SOURCE_SHA512=$$(sha512sum $(LINUX_SOURCE) | cut -d' ' -f1)

.PHONY: setup demo test bench release

# System packages: the kernel source the demo builds from, and hyperfine for
# benchmarks. Installed only when missing.
setup:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

release:
	$(CARGO) build --release --locked

demo: setup release
	$(COMPOSER) validate --strict $(LINUX_ARGS)
	$(COMPOSER) graph kernel hailort hello $(LINUX_ARGS)
	$(COMPOSER) render kernel-prepare $(LINUX_ARGS)
	$(COMPOSER) render hailort --template manifest.yaml $(LINUX_ARGS)
	@echo "demo: tag of the hello extension: $$($(COMPOSER) eval -t hello $(LINUX_ARGS) '{{ .VERSION }}')"

test:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --locked --no-fail-fast; \
	else \
	  $(CARGO) test --locked --no-fail-fast; \
	fi

# Loading + rendering both real corpora for both platforms (validate loads
# every platform). No other tool to compare with runs here (bldr needs Go
# modules from outside the reachable registries), so the report is absolute.
bench: setup release
	hyperfine --warmup 3 --shell=none \
	  -n 'siderolabs-pkgs: load + render, amd64 + arm64' \
	  '$(COMPOSER) validate --root ../shared/corpus/siderolabs-pkgs' \
	  -n 'siderolabs-extensions: load + render, amd64 + arm64' \
	  '$(COMPOSER) validate --root ../shared/corpus/siderolabs-extensions --build-arg TEST_STAGE='
