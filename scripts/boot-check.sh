#!/usr/bin/env bash
# Boots an installer image made by `composer image-installer` under QEMU
# (TCG) with module.sig_enforce=1 and checks what its /init reports: every
# extension layer mounted and every module the extensions carry loaded
# (listed in /proc/modules). It fails, naming each module and the kernel's
# reason, when one did not load, and when there was no module to check.
#
#   scripts/boot-check.sh _out/installer-amd64.tar --expect hello_pcie --expect hailo_pci
#
# The tarball is read by real clients (skopeo copy, umoci unpack), as a
# user would. Needs skopeo, umoci, qemu-system-x86 (make setup installs
# them). The base must be composer's demo base (pkgs/installer-base),
# whose /init prints the "composer-init:" lines checked here.
set -euo pipefail

usage() {
  echo "usage: $0 INSTALLER.tar [--expect MODULE]... [--no-modules]" >&2
  echo "  --expect MODULE  this module must be among those loaded (repeatable)" >&2
  echo "  --no-modules     pass although no extension carries a module (by default" >&2
  echo "                   that is a failure: nothing would have been checked)" >&2
  exit 2
}

tar=""
expect=()
no_modules=0
while (($#)); do
  case "$1" in
    --expect)
      (($# >= 2)) || usage
      expect+=("$2")
      shift 2
      ;;
    --no-modules)
      no_modules=1
      shift
      ;;
    -h | --help) usage ;;
    -*)
      echo "boot-check: unknown option $1" >&2
      usage
      ;;
    *)
      [[ -z "${tar}" ]] || usage
      tar=$1
      shift
      ;;
  esac
done
[[ -n "${tar}" ]] || usage
[[ -f "${tar}" ]] || {
  echo "boot-check: ${tar}: no such file" >&2
  exit 1
}
work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT

skopeo copy -q "docker-archive:${tar}" "oci:${work}/layout:installer"
umoci unpack --image "${work}/layout:installer" "${work}/bundle" >/dev/null
install=${work}/bundle/rootfs/usr/install/amd64
for f in vmlinuz initramfs.xz; do
  [[ -f "${install}/${f}" ]] || {
    echo "boot-check: the image has no usr/install/amd64/${f}" >&2
    exit 1
  }
done

echo "boot-check: booting ${tar} under QEMU (TCG, module.sig_enforce=1)..."
timeout 300 qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot \
  -kernel "${install}/vmlinuz" -initrd "${install}/initramfs.xz" \
  -append "console=ttyS0 module.sig_enforce=1 panic=-1" >"${work}/console" 2>&1 || true
console=${work}/console.txt
tr -d '\r' <"${work}/console" >"${console}"

grep '^composer-init:' "${console}" || true
failures=()
grep -q '^composer-init: boot check passed' "${console}" ||
  failures+=("the base's /init did not report success")
while IFS= read -r line; do
  failures+=("${line#composer-init: }")
done < <(grep '^composer-init: module .* NOT loaded' "${console}" || true)
loaded=$(sed -n 's/^composer-init: module \([^ ]*\) loaded$/\1/p' "${console}")
if [[ -z "${loaded}" && "${no_modules}" == 0 ]]; then
  failures+=("no extension module was loaded, so nothing was checked (--no-modules accepts an installer without modules)")
fi
for m in "${expect[@]}"; do
  grep -qx -- "${m}" <<<"${loaded}" || failures+=("expected module ${m} was not loaded")
  grep -q -- "^${m} " "${console}" || failures+=("expected module ${m} is not in /proc/modules")
done

if ((${#failures[@]} == 0)); then
  echo "boot check passed: ${tar} booted, extension module(s) $(paste -sd, - <<<"${loaded:-none}") loaded under module.sig_enforce=1"
  exit 0
fi
echo "boot check FAILED: ${tar}" >&2
for f in "${failures[@]}"; do
  echo "  - ${f}" >&2
done
echo "the console (last 40 lines):" >&2
tail -40 "${console}" >&2
exit 1
