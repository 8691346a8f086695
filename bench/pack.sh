#!/usr/bin/env bash
# Packing a ~500 MB kernel-module tree into a zstd layer with its digest:
#   pipeline  tar -c | zstd -T0 -3 | sha256sum   (what a script would do;
#             it yields only the digest, no image)
#   composer  composer pack --compression zstd   (layer + diff ID + config +
#             manifest in an OCI layout)
#   umoci     umoci repack of the same tree in a bundle (gzip: umoci 0.4.7
#             has no zstd)
# Target: composer no slower than the pipeline.
# Usage: bench/pack.sh COMPOSER   (`make bench`; uses the Debian kernel
# package bench/verify.sh downloads)
set -euo pipefail
composer=$(realpath "$1")
bench=$(dirname "$(realpath "$0")")
work=${BENCH_DIR:-$PWD/target/bench}
mkdir -p "$work" && cd "$work"
source "$bench/kimage.sh"
# ~500 MB: the package's module tree plus a second copy of its drivers.
tree=$work/pack-tree
if [ ! -d "$tree" ]; then
  mkdir -p "$tree/usr/lib"
  cp -a kimage/lib/modules "$tree/usr/lib/"
  rel=$(ls "$tree/usr/lib/modules")
  cp -a "$tree/usr/lib/modules/$rel/kernel/drivers" "$tree/usr/lib/modules/$rel/kernel/drivers-copy"
fi
echo "tree: $(du -sh "$tree" | cut -f1), $(find "$tree" -type f | wc -l) files"
export SOURCE_DATE_EPOCH=0
rm -rf bundle-layout bundle && umoci init --layout bundle-layout && umoci new --image bundle-layout:base
umoci unpack --image bundle-layout:base bundle >/dev/null
cp -a "$tree/." bundle/rootfs/

hyperfine --warmup 1 --runs 3 --shell=bash --export-json pack.json \
  -n pipeline "tar -C '$tree' -c . | zstd -q -T0 -3 | sha256sum" \
  --prepare "rm -rf '$work/packed'" \
  -n composer "'$composer' pack '$tree' --compression zstd -o 'oci:$work/packed:t' >/dev/null 2>&1" \
  -n 'umoci repack (gzip)' "umoci repack --image bundle-layout:t bundle"

python3 - <<'PY'
import json
r = {x["command"]: x["mean"] for x in json.load(open("pack.json"))["results"]}
base = r["pipeline"]
for k, v in r.items():
    print(f"{k:22s} {v:7.2f} s  {v / base:5.2f}x the pipeline")
verdict = "met" if r["composer"] <= base * 1.0 else "MISSED"
print(f"target (composer no slower than the pipeline): {verdict}")
PY
