#!/usr/bin/env bash
# `composer verify` against what a user would otherwise run, on Debian's
# real kernel package (thousands of modules signed with the kernel's
# build-time key, whose certificate is built into its vmlinuz):
#   presence   Talos' check: find ... -exec grep -FL '~Module signature appended~' {} +
#   composer   full cryptographic verification (--cert; and --kernel, which
#              also unpacks the certificate from vmlinuz)
#   openssl    a loop of `openssl cms -verify` over a 300-module sample
# Targets: composer ≤ 1.5× presence; ≥ 20× faster than openssl per module.
# Usage: bench/verify.sh COMPOSER   (`make bench`; downloads the .deb once)
set -euo pipefail
composer=$(realpath "$1")
bench=$(dirname "$(realpath "$0")")
work=${BENCH_DIR:-$PWD/target/bench}
mkdir -p "$work" && cd "$work"
source "$bench/kimage.sh"
vmlinuz=$(ls kimage/boot/vmlinuz-*)
mods=kimage/lib/modules
n=$(find $mods -name '*.ko' | wc -l)
echo "modules: $n ($(du -sh $mods | cut -f1)) from $(basename "$vmlinuz")"

# The kernel's module certificate, as a file (what a build tree has).
python3 - "$vmlinuz" <<'PY'
import lzma, struct, subprocess, sys
d = open(sys.argv[1], 'rb').read()
setup = (d[0x1f1] or 4) + 1
off, length = struct.unpack('<II', d[0x248:0x250])
code = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[setup * 512 + off:][:length])
i = 0
while (i := code.find(b'\x30\x82', i)) >= 0:
    if code[i + 4:i + 6] == b'\x30\x82':
        der = code[i:i + 4 + int.from_bytes(code[i + 2:i + 4], 'big')]
        if subprocess.run(['openssl', 'x509', '-inform', 'DER', '-noout'], input=der, capture_output=True).returncode == 0:
            open('kernel-cert.der', 'wb').write(der)
            subprocess.run(['openssl', 'x509', '-inform', 'DER', '-in', 'kernel-cert.der', '-out', 'kernel-cert.pem'])
            break
    i += 1
PY

# A sample for the openssl loop: the first 300 modules, and each one's
# content and CMS split apart beforehand (not timed).
rm -rf sample && mkdir -p sample/ko sample/split
find $mods -name '*.ko' | sort > all-modules.txt
head -300 all-modules.txt | while read -r f; do cp "$f" sample/ko/; done
python3 - <<'PY'
import os
magic = b"~Module signature appended~\n"
for name in sorted(os.listdir('sample/ko')):
    d = open(f'sample/ko/{name}', 'rb').read()
    n = int.from_bytes(d[-len(magic) - 4:-len(magic)], 'big')
    end = len(d) - len(magic) - 12
    open(f'sample/split/{name}.content', 'wb').write(d[:end - n])
    open(f'sample/split/{name}.p7s', 'wb').write(d[end - n:end])
PY
cat > openssl-loop.sh <<'SH'
for c in sample/split/*.content; do
  openssl cms -verify -binary -inform DER -in "${c%.content}.p7s" -content "$c" \
    -certfile kernel-cert.pem -nointern -noverify -out /dev/null 2>/dev/null || exit 1
done
SH

hyperfine --warmup 1 --runs 5 --shell=bash --export-json all.json \
  -n presence "find $mods -name '*.ko' -exec grep -FL '~Module signature appended~' {} + >/dev/null" \
  -n composer-cert "$composer verify $mods --cert kernel-cert.der -q" \
  -n composer-kernel "$composer verify $mods --kernel $vmlinuz -q"
hyperfine --warmup 1 --runs 3 --shell=bash --export-json sample.json \
  -n openssl-300 "bash openssl-loop.sh" \
  -n composer-300 "$composer verify sample/ko --cert kernel-cert.der -q"

python3 - <<'PY'
import json
m = {r["command"]: r["mean"] for f in ("all.json", "sample.json") for r in json.load(open(f))["results"]}
print(f"composer --cert   / presence check: {m['composer-cert'] / m['presence']:.2f}x (target <= 1.5x)")
print(f"composer --kernel / presence check: {m['composer-kernel'] / m['presence']:.2f}x (includes unpacking vmlinuz)")
print(f"openssl loop / composer, 300 modules: {m['openssl-300'] / m['composer-300']:.1f}x faster (target >= 20x)")
PY
