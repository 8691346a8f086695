#!/usr/bin/env bash
# Benchmarks of `composer build` on the demo tree (kernel + hello-module):
#   cold     empty cache (kernel unpacked and compiled, ccache empty)
#   no-op    nothing changed: every stage a cache hit
#   touched  the fixture module's source changed: the module rebuilds in a new
#            signing session (the kernel stage writes the new certificate into
#            the kernel compiled once); goal ≤ 5 % of cold
#   rotation nothing changed, a new session asked for (--new-session): the
#            kernel stage runs, the module's cached build is signed again;
#            goal ≤ 3 % of cold
# Usage: bench/build.sh COMPOSER   (run from the repository root; `make bench`)
set -euo pipefail
composer=$(realpath "$1")
src=/usr/src/linux-source-6.1.tar.xz
args=(--build-arg "LINUX_SOURCE_SHA256=$(sha256sum $src | cut -d' ' -f1)"
      --build-arg "LINUX_SOURCE_SHA512=$(sha512sum $src | cut -d' ' -f1)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a pkgs extensions fixtures "$work"/
cd "$work"
export COMPOSER_CACHE_DIR="$work/cache"
cmd="$composer build kernel hello-module ${args[*]}"
touch_module='echo "/* $RANDOM */" >> fixtures/hello-module/linux/pcie/hello_pcie.c'

hyperfine --runs 1 --shell=bash --export-json cold.json \
  --prepare "rm -rf $work/cache _out" -n cold "$cmd"
hyperfine --runs 5 --shell=bash --export-json noop.json -n no-op "$cmd"
hyperfine --runs 3 --shell=bash --export-json touched.json \
  --prepare "$touch_module" -n touched "$cmd"
hyperfine --runs 3 --shell=bash --export-json rotation.json \
  -n rotation "$cmd --new-session"

python3 - <<'PY'
import json
mean = lambda f: json.load(open(f))["results"][0]["mean"]
cold, noop, touched = mean("cold.json"), mean("noop.json"), mean("touched.json")
rotation = mean("rotation.json")
print(f"cold {cold:.1f} s   no-op {noop:.3f} s   touched module {touched:.1f} s   new session {rotation:.1f} s")
print(f"touched / cold  = {touched / cold * 100:.1f} % (goal <= 5 %)")
print(f"rotation / cold = {rotation / cold * 100:.1f} % (goal <= 3 %)")
print(f"no-op / cold    = {noop / cold * 100:.2f} %")
PY
