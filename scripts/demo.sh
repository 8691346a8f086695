#!/usr/bin/env bash
# The whole chain on the bundled demo tree (`make demo`):
#   validate → graph → build the kernel, the fixture module, the real HailoRT
#   driver, their extensions and the base installer in one signing session →
#   verify every module against the built kernel → image-installer →
#   boot-check (QEMU, module.sig_enforce=1: hello_pcie, hello_user and hailo_pci
#   must load);
#   then the same modules for kernels composer does not build: Debian 12's two
#   newest cloud kernels (scripts/debian-kernel.sh fetches their packages with
#   apt), one KMM image per release signed with a demo MOK key, each booted on
#   Debian's own kernel (scripts/kmod-boot-check.sh: hello_pcie, then
#   hello_user, which needs it).
#
#   scripts/demo.sh target/release/composer
#
# Sources: the HailoRT driver archive comes from SOURCES (default
# ../shared/sources, byte-identical to the release) when that directory
# exists, else from GitHub. The Hailo-8 firmware is a proprietary download:
# give the real file as HAILORT_FIRMWARE=PATH (its checksums must be the
# Pkgfile's); without it a generated stand-in is used, with its own
# checksums, and the demo says so. The stand-in is not firmware: it is only
# installed, never loaded (the boot check has no Hailo device).
set -euo pipefail

composer=${1:?usage: $0 COMPOSER}
out=_out
sources=${SOURCES:-../shared/sources}
linux=/usr/src/linux-source-6.1.tar.xz
targets=(kernel hello-module hello hailort-pkg hailort installer-base)

args=(
  --build-arg "LINUX_SOURCE_SHA256=$(sha256sum "${linux}" | cut -d' ' -f1)"
  --build-arg "LINUX_SOURCE_SHA512=$(sha512sum "${linux}" | cut -d' ' -f1)"
)
# Where build finds sources before their URLs.
mirrors=()
if [[ -d "${sources}" ]]; then
  mirrors+=(--source-mirror "${sources}")
fi

# The firmware, under its sha256 in a mirror directory of its own.
firmware_mirror=${out}/firmware-mirror
rm -rf "${firmware_mirror}"
mkdir -p "${firmware_mirror}"
if [[ -n "${HAILORT_FIRMWARE:-}" ]]; then
  sum=$(sha256sum "${HAILORT_FIRMWARE}" | cut -d' ' -f1)
  cp "${HAILORT_FIRMWARE}" "${firmware_mirror}/${sum}"
  echo "demo: Hailo-8 firmware from ${HAILORT_FIRMWARE}"
else
  version=$("${composer}" eval -t hailort-pkg '{{ .hailort_version }}' "${args[@]}")
  standin=${firmware_mirror}/standin.bin
  printf 'composer demo: a generated stand-in for hailo8_fw.%s.bin, which is a proprietary download. Not firmware.\n' \
    "${version}" >"${standin}"
  sha256=$(sha256sum "${standin}" | cut -d' ' -f1)
  sha512=$(sha512sum "${standin}" | cut -d' ' -f1)
  mv "${standin}" "${firmware_mirror}/${sha256}"
  args+=(--build-arg "HAILORT_FIRMWARE_SHA256=${sha256}" --build-arg "HAILORT_FIRMWARE_SHA512=${sha512}")
  echo "demo: the Hailo-8 firmware is a proprietary download; using a generated stand-in (sha256 ${sha256})."
  echo "      Set HAILORT_FIRMWARE=/path/to/hailo8_fw.${version}.bin to build with the real one."
fi
mirrors+=(--source-mirror "${firmware_mirror}")

tag() { "${composer}" eval -t "$1" '{{ .VERSION }}' "${args[@]}"; }

set -x
"${composer}" validate --strict "${args[@]}"
"${composer}" graph "${targets[@]}" "${args[@]}"
"${composer}" build "${targets[@]}" "${args[@]}" "${mirrors[@]}"
"${composer}" verify "${out}/hello-module" "${out}/hailort-pkg" --kernel "${out}/kernel/boot/vmlinuz"
"${composer}" image-installer --arch amd64 \
  --base-installer-image "oci:${out}/images/installer-base:$(tag installer-base)" \
  --system-extension-image "oci:${out}/images/hello:$(tag hello)" \
  --system-extension-image "oci:${out}/images/hailort:$(tag hailort)" \
  --output "${out}/installer-amd64.tar"
scripts/boot-check.sh "${out}/installer-amd64.tar" --expect hello_pcie --expect hello_user --expect hailo_pci
set +x

# Modules for kernels composer does not build: Debian's, one KMM image per
# release. The key stands for the one a user enrolls with MOK (made once,
# kept in _out/; composer never makes or keeps it).
mok=${out}/demo-mok.pem
if [[ ! -s "${mok}" ]]; then
  openssl req -new -x509 -nodes -days 3650 -newkey ec -pkeyopt ec_paramgen_curve:P-384 \
    -subj "/CN=composer demo MOK" -keyout "${out}/demo-mok.key" -out "${out}/demo-mok.crt" 2>/dev/null
  cat "${out}/demo-mok.key" "${out}/demo-mok.crt" >"${mok}"
  rm -f "${out}/demo-mok.key"
  echo "demo: made ${mok}, a stand-in for your MOK key (enroll its certificate ${out}/demo-mok.crt with mokutil --import)"
fi
mapfile -t releases < <(scripts/debian-kernel.sh releases 2)
scripts/debian-kernel.sh fetch "${out}/debian" "${releases[@]}"
kmods=(hello-kmod hailort-kmod)
set -x
"${composer}" matrix --kernel-release "$(IFS=,; echo "${releases[*]}")" "${kmods[@]}" "${args[@]}"
for release in "${releases[@]}"; do
  mapfile -t debs < "${out}/debian/${release}/build-args"
  "${composer}" build --kernel-release "${release}" "${debs[@]}" "${args[@]}" "${mirrors[@]}" \
    --format kmm --signing-key "${mok}" -o "${out}/kmm/${release}" "${kmods[@]}"
  "${composer}" verify "${out}/kmm/${release}/hello-kmod" "${out}/kmm/${release}/hailort-kmod" --cert "${out}/demo-mok.crt"
  rm -rf "${out}/kmm/${release}/bundle"
  umoci unpack --image "${out}/kmm/${release}/images/hello-kmod:${release}" "${out}/kmm/${release}/bundle" >/dev/null
  scripts/kmod-boot-check.sh --kernel-deb "${out}/debian/${release}/image.deb" \
    --kmm "${out}/kmm/${release}/bundle/rootfs" --expect-loaded hello_pcie --expect-loaded hello_user
done
