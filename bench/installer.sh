#!/usr/bin/env bash
# composer image-installer on the demo: the base installer (installer-base)
# plus two extensions, hello (a signed module, its firmware) and payload
# (~400 MB: Debian's kernel package tree under /usr/local/share, so the
# squashfs step has real work), against what the squashfs step costs with
# Debian's mksquashfs alone, same options (zstd level 18, -all-root).
#   composer  the whole image-installer: unpack, validate (module
#             signatures), squashfs x3, depmod, cpio + zstd, docker-archive
#   mksquashfs the payload's squashfs alone
# Target: composer ≤ 1.1× mksquashfs on the same extensions.
# Usage: bench/installer.sh COMPOSER   (`make bench`; needs `make demo`'s
# _out/images and the Debian kernel package bench/verify.sh downloads)
set -euo pipefail
composer=$(realpath "$1")
bench=$(dirname "$(realpath "$0")")
project=$PWD
work=${BENCH_DIR:-$PWD/target/bench}
mkdir -p "$work" && cd "$work"
source "$bench/kimage.sh"
base_tag=$("$composer" eval -t installer-base '{{ .VERSION }}' --root "$project/pkgs" --root "$project/extensions" 2>/dev/null)
hello_tag=$("$composer" eval -t hello '{{ .VERSION }}' --root "$project/pkgs" --root "$project/extensions" 2>/dev/null)
for img in installer-base hello; do
  [ -d "$project/_out/images/$img" ] || { echo "bench/installer.sh: run make demo first ($project/_out/images/$img missing)" >&2; exit 1; }
done
ext=$work/payload-ext
# The payload is data: its .ko files are renamed, or the modules-signed rule
# would (rightly) refuse Debian's modules, signed by Debian's key.
if [ -d "$ext" ] && [ -n "$(find "$ext" -name '*.ko' -print -quit)" ]; then rm -rf "$ext"; fi
if [ ! -d "$ext" ]; then
  mkdir -p "$ext/rootfs/usr/local/share/payload"
  cp -a kimage/. "$ext/rootfs/usr/local/share/payload/"
  find "$ext/rootfs" -name '*.ko' -exec mv {} {}.data \;
  printf 'version: v1alpha1\nmetadata:\n  name: payload\n  version: 1.0.0\n  author: bench\n  description: a large extension\n  compatibility:\n    talos:\n      version: ">= v1.9.0"\n' > "$ext/manifest.yaml"
fi
rm -rf payload-image && "$composer" pack "$ext" -o "oci:$work/payload-image:1.0.0" >/dev/null 2>&1
echo "payload: $(du -sh "$ext/rootfs" | cut -f1), $(find "$ext/rootfs" -type f | wc -l) files"
export SOURCE_DATE_EPOCH=0
hyperfine --warmup 1 --runs 3 --shell=bash --export-json installer.json \
  -n composer "'$composer' image-installer --cache-dir '$work/installer-cache' \
      --base-installer-image oci:$project/_out/images/installer-base:$base_tag \
      --system-extension-image oci:$project/_out/images/hello:$hello_tag \
      --system-extension-image oci:$work/payload-image:1.0.0 -o '$work/installer.tar' >/dev/null 2>&1" \
  -n mksquashfs "mksquashfs '$ext/rootfs' '$work/payload.sqsh' -all-root -noappend -no-progress -quiet -comp zstd -Xcompression-level 18"

python3 - <<'PY'
import json
r = {x["command"]: x["mean"] for x in json.load(open("installer.json"))["results"]}
c, m = r["composer"], r["mksquashfs"]
print(f"image-installer (base + hello + payload): {c:.2f} s; mksquashfs of the payload alone: {m:.2f} s; ratio {c/m:.2f}x (target <= 1.1x)")
PY
