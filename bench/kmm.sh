#!/usr/bin/env bash
# Benchmarks of modules for kernels composer does not build: the two fixture
# modules (hello_pcie, and hello_user, which uses it) for Debian's two
# newest cloud kernels, one KMM image per release pushed to a docker-registry
# on 127.0.0.1, side by side with what a user would run by hand:
#   cold         composer, empty cache: unpack each release's headers, build,
#                pack and push both images
#   by hand      dpkg-deb -x the three packages, point the Makefile at them,
#                make both modules, depmod (no image, no push): the compile
#                work alone, a lower bound
#   skip         composer --skip-existing, empty cache, every image already in
#                the registry: asks the registry and compiles nothing (checked)
#   skopeo       `skopeo inspect` of both tags: what asking the registry costs
# Usage: bench/kmm.sh COMPOSER   (run from the repository root; `make bench`)
set -euo pipefail
composer=$(realpath "$1")
repo=$(pwd)
work=$(mktemp -d)
registry_pid=
cleanup() {
  [[ -n "${registry_pid}" ]] && kill "${registry_pid}" 2>/dev/null
  rm -rf "${work}"
}
trap cleanup EXIT
cp -a pkgs extensions fixtures "${work}/"
cd "${work}"

mapfile -t releases < <("${repo}/scripts/debian-kernel.sh" releases 2)
"${repo}/scripts/debian-kernel.sh" fetch "${repo}/target/debian-debs" "${releases[@]}"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > registry.yml <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: ${work}/registry}}
http: {addr: 127.0.0.1:${port}, secret: bench}
YML
docker-registry serve registry.yml >registry.log 2>&1 &
registry_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:${port}/v2/" >/dev/null && break; sleep 0.1; done
prefix=127.0.0.1:${port}/kmods

# hello-kmod for every release of $RELEASES, with cache $1 and extra options.
build_all() {
  local cache=$1; shift
  for r in ${RELEASES}; do
    mapfile -t debs < "${repo}/target/debian-debs/${r}/build-args"
    "${composer}" build --cache-dir "${cache}" -o "out/${r}" --kernel-release "${r}" "${debs[@]}" \
      --format kmm --unsigned --push "${prefix}" --insecure "$@" hello-kmod
  done
}
export -f build_all
export composer repo prefix
export RELEASES="${releases[*]}"

by_hand() {
  for r in ${RELEASES}; do
    d=hand/${r}
    rm -rf "${d}" && mkdir -p "${d}"
    for p in headers common kbuild; do dpkg-deb -x "${repo}/target/debian-debs/${r}/${p}.deb" "${d}/root"; done
    sed -i "s#^include /usr/src/#include ${PWD}/${d}/root/usr/src/#" "${d}/root/usr/src/linux-headers-${r}/Makefile"
    cp -a fixtures/hello-module "${d}/src"
    make -s -C "${d}/src/linux/user" KERNEL_DIR="${PWD}/${d}/root/usr/src/linux-headers-${r}" all >/dev/null
    for m in pcie user; do
      make -s -C "${d}/root/usr/src/linux-headers-${r}" M="${PWD}/${d}/src/linux/${m}" modules_install \
        INSTALL_MOD_PATH="${PWD}/${d}/inst" INSTALL_MOD_DIR=extra INSTALL_MOD_STRIP=1 >/dev/null 2>&1
    done
    depmod -b "${d}/inst" "${r}"
  done
}
export -f by_hand

# bash -c: hyperfine runs each command in a shell that sees the functions.
hyperfine --runs 3 --shell=bash --export-json cold.json \
  --prepare "rm -rf ${work}/cache out" -n 'composer, cold (2 releases, build + push)' \
  "build_all ${work}/cache >/dev/null 2>&1"
hyperfine --runs 3 --shell=bash --export-json hand.json \
  -n 'by hand: dpkg-deb + make + depmod (2 releases, no image)' "by_hand"

# Every image is in the registry now: a fresh machine compiles nothing.
build_all "${work}/skipcheck" --skip-existing >skip.log 2>&1
if [[ "$(grep -c 'built 0 stage(s)' skip.log)" != "${#releases[@]}" ]] || grep -q ': started' skip.log; then
  echo "bench/kmm.sh: --skip-existing built something:" >&2
  cat skip.log >&2
  exit 1
fi
hyperfine --runs 5 --shell=bash --export-json skip.json \
  --prepare "rm -rf ${work}/fresh" -n 'composer --skip-existing (2 releases, all in the registry)' \
  "build_all ${work}/fresh --skip-existing >/dev/null 2>&1"
inspect=""
for r in "${releases[@]}"; do
  inspect+="skopeo inspect --tls-verify=false docker://${prefix}/hello-kmod:${r} >/dev/null; "
done
hyperfine --runs 5 --shell=bash --export-json skopeo.json -n 'skopeo inspect of both tags' "${inspect}"

python3 - <<'PY'
import json
mean = lambda f: json.load(open(f))["results"][0]["mean"]
cold, hand, skip, skopeo = (mean(f"{n}.json") for n in ("cold", "hand", "skip", "skopeo"))
print(f"cold {cold:.2f} s   by hand {hand:.2f} s   skip-existing {skip:.3f} s   skopeo inspect {skopeo:.3f} s")
print(f"cold / by hand        = {cold / hand:.2f}x (composer also packs, validates and pushes two images)")
print(f"skip-existing / cold  = {skip / cold * 100:.1f} %  (no compile: 'built 0 stage(s)' checked)")
print(f"skip-existing / skopeo = {skip / skopeo:.2f}x")
PY
