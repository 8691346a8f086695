#!/usr/bin/env bash
# The whole chain on the bundled demo tree (`make demo`):
#   validate → graph → build the kernel, the fixture module, the real HailoRT
#   driver, their extensions and the base installer in one signing session →
#   verify every module against the built kernel → image-installer →
#   boot-check (QEMU, module.sig_enforce=1: hello_pcie and hailo_pci must load).
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
scripts/boot-check.sh "${out}/installer-amd64.tar" --expect hello_pcie --expect hailo_pci
