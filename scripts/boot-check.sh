#!/usr/bin/env bash
# Boots an installer image made by `composer image-installer` under QEMU
# (TCG) with module.sig_enforce=1 and checks what its /init reports: every
# extension layer mounted and every extension module loaded.
#
#   scripts/boot-check.sh _out/installer-amd64.tar
#
# The tarball is read by real clients (skopeo copy, umoci unpack), as a
# user would. Needs skopeo, umoci, qemu-system-x86 (make setup installs
# them). The base must be composer's demo base (pkgs/installer-base),
# whose /init prints the "composer-init:" lines checked here.
set -euo pipefail

tar=${1:?usage: $0 INSTALLER.tar}
[[ -f "${tar}" ]] || { echo "boot-check: ${tar}: no such file" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT

skopeo copy -q "docker-archive:${tar}" "oci:${work}/layout:installer"
umoci unpack --image "${work}/layout:installer" "${work}/bundle" >/dev/null
install=${work}/bundle/rootfs/usr/install/amd64
for f in vmlinuz initramfs.xz; do
  [[ -f "${install}/${f}" ]] || { echo "boot-check: the image has no usr/install/amd64/${f}" >&2; exit 1; }
done

echo "boot-check: booting ${tar} under QEMU (TCG, module.sig_enforce=1)..."
timeout 300 qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot \
  -kernel "${install}/vmlinuz" -initrd "${install}/initramfs.xz" \
  -append "console=ttyS0 module.sig_enforce=1 panic=-1" > "${work}/console" 2>&1 || true

grep '^composer-init:' "${work}/console" || true
if grep -q '^composer-init: boot check passed' "${work}/console"; then
  loaded=$(sed -n 's/^composer-init: module \(.*\) loaded.*/\1/p' "${work}/console" | tr -d '\r' | paste -sd, -)
  echo "boot check passed: ${tar} booted, extension module(s) ${loaded:-none} loaded under module.sig_enforce=1"
else
  echo "boot check FAILED: the console (last 40 lines):" >&2
  tail -40 "${work}/console" >&2
  exit 1
fi
