#!/usr/bin/env bash
# Boots a distribution kernel under QEMU (TCG) with the modules of a KMM
# kmod image and checks which of them the kernel loads or refuses:
#
#   scripts/kmod-boot-check.sh (--kernel VMLINUZ | --kernel-deb IMAGE.deb)
#       --kmm TREE [--sig-enforce] [--expect-loaded M]...
#       [--expect-refused M]... [--load M]... [--log FILE]
#       [--timeout SECONDS] [--memory MB]
#
#   --kernel VMLINUZ      the kernel to boot (a bzImage, e.g. Debian's
#                         /boot/vmlinuz-<release>)
#   --kernel-deb DEB      or take it from a linux-image-<release> .deb
#   --kmm TREE            the image's root, holding opt/lib/modules/<release>/
#                         with depmod's index (`depmod -b TREE/opt <release>`)
#   --sig-enforce         boot with module.sig_enforce=1 (only keys the
#                         kernel trusts are accepted) and require that the
#                         kernel reports it enforces
#   --expect-loaded M     M must be loaded, and the kernel tainted O
#                         (out-of-tree module); repeatable
#   --expect-refused M    M must be refused by the kernel; repeatable
#   --load M              modprobe M (repeatable); by default every module
#                         of the image that no other one depends on, so
#                         modprobe loads the rest first, following modules.dep
#   --log FILE            keep the console there (default: a temporary file,
#                         kept and named when the check fails)
#   --timeout SECONDS     give up on the boot after this long (default 120)
#   --memory MB           the machine's memory (default 512)
#
# The initramfs holds busybox (static) and the image's release directory as
# /opt/lib/modules/<release>, linked from /lib/modules/<release>. Its /init
# checks `uname -r` against the image's release (an image for another release
# is not loaded, as on a node), runs modprobe per module, then each module
# named by --expect-refused that is still not loaded (its own verdict), and
# prints "KMOD-CHECK:" lines: loaded M | refused M: ERROR | module <its
# /proc/modules line> and order M... (oldest first) | taint N FLAGS |
# sig_enforce Y|N | release-mismatch ... | done. Exit status: 0 when every
# expectation holds, 1 when one does not (each reason named), 2 for a wrong
# command line. A module that was refused without --expect-refused fails.
#
#   scripts/kmod-boot-check.sh --kernel-deb debs/6.1.0-57-cloud-amd64/image.deb \
#       --kmm _out/images/hello-module --expect-loaded hello_pcie --expect-loaded hello_user
#   scripts/kmod-boot-check.sh --kernel vmlinuz-6.1.0-57-cloud-amd64 --kmm tree \
#       --sig-enforce --expect-refused hello_pcie --expect-refused hello_user
#
# Needs qemu-system-x86_64, busybox-static, cpio, gzip (and dpkg-deb for
# --kernel-deb). Never KVM: TCG only.
set -euo pipefail

readonly PREFIX="KMOD-CHECK: "

help() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit 0
}
wrong() {
  echo "kmod-boot-check: $*" >&2
  echo "(--help for the usage)" >&2
  exit 2
}
die() {
  echo "kmod-boot-check: $*" >&2
  exit 1
}

# The kernel's name of a module file or name: no directory, no .ko[.xz...],
# '-' as '_' (as /proc/modules spells it).
modname() {
  local n=${1##*/}
  n=${n%%.ko*}
  echo "${n//-/_}"
}

# True when word $1 is among the remaining arguments.
member() {
  local w=$1 x
  shift
  for x in "$@"; do [[ "$x" == "$w" ]] && return 0; done
  return 1
}

kernel="" kernel_deb="" tree="" log="" sig_enforce=0 timeout_s=120 memory=512
expect_loaded=() expect_refused=() load=()
while (($#)); do
  case "$1" in
    --kernel | --kernel-deb | --kmm | --log | --timeout | --memory | --expect-loaded | --expect-refused | --load)
      (($# >= 2)) || wrong "$1 needs a value"
      case "$1" in
        --kernel) kernel=$2 ;;
        --kernel-deb) kernel_deb=$2 ;;
        --kmm) tree=$2 ;;
        --log) log=$2 ;;
        --timeout) timeout_s=$2 ;;
        --memory) memory=$2 ;;
        --expect-loaded) expect_loaded+=("$(modname "$2")") ;;
        --expect-refused) expect_refused+=("$(modname "$2")") ;;
        --load) load+=("$(modname "$2")") ;;
      esac
      shift 2
      ;;
    --sig-enforce)
      sig_enforce=1
      shift
      ;;
    -h | --help) help ;;
    *) wrong "unknown argument '$1'" ;;
  esac
done

[[ -n "${kernel}" || -n "${kernel_deb}" ]] || wrong "give the kernel: --kernel VMLINUZ or --kernel-deb IMAGE.deb"
[[ -z "${kernel}" || -z "${kernel_deb}" ]] || wrong "--kernel and --kernel-deb exclude each other"
[[ -n "${tree}" ]] || wrong "give the image: --kmm TREE"
[[ "${timeout_s}" =~ ^[1-9][0-9]*$ ]] || wrong "--timeout must be a number of seconds, got '${timeout_s}'"
[[ "${memory}" =~ ^[1-9][0-9]*$ ]] || wrong "--memory must be a number of MB, got '${memory}'"
((${#expect_loaded[@]} + ${#expect_refused[@]} > 0)) ||
  wrong "nothing to check: give --expect-loaded M and/or --expect-refused M"
for m in "${expect_loaded[@]}" "${expect_refused[@]}" "${load[@]}"; do
  [[ "$m" =~ ^[A-Za-z0-9_]+$ ]] || wrong "'$m' is not a module name"
done
for m in "${expect_loaded[@]}"; do
  ! member "$m" "${expect_refused[@]}" || wrong "$m is expected both loaded and refused"
done

for tool in qemu-system-x86_64 cpio gzip timeout; do
  command -v "${tool}" >/dev/null || die "needs ${tool} (make setup installs it)"
done
busybox=$(command -v busybox) || die "needs busybox (apt-get install busybox-static)"
if LC_ALL=C ldd "${busybox}" >/dev/null 2>&1; then
  die "${busybox} is dynamically linked; the initramfs needs a static one (apt-get install busybox-static)"
fi

# The image: its one release, its modules and their dependencies.
moddir=${tree}/opt/lib/modules
[[ -d "${moddir}" ]] || die "${tree}: not a KMM kmod image: no opt/lib/modules/"
mapfile -t releases < <(find "${moddir}" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | LC_ALL=C sort)
case ${#releases[@]} in
  0) die "${tree}: holds no kernel release under opt/lib/modules/ (no modules to check)" ;;
  1) release=${releases[0]} ;;
  *) die "${tree}: holds several kernel releases under opt/lib/modules/ (${releases[*]}); a kmod image is for one" ;;
esac
[[ "${release}" =~ ^[A-Za-z0-9._+-]+$ ]] || die "${tree}: '${release}' is not a kernel release"
reldir=${moddir}/${release}
mapfile -t kofiles < <(cd "${reldir}" && find . -type f \( -name '*.ko' -o -name '*.ko.*' \) -printf '%P\n' | LC_ALL=C sort)
((${#kofiles[@]} > 0)) || die "${tree}: opt/lib/modules/${release}/ holds no modules (.ko)"
[[ -s "${reldir}/modules.dep" ]] ||
  die "${tree}: opt/lib/modules/${release}/ has no modules.dep (make it: depmod -b ${tree}/opt ${release})"

modules=() depended=() indexed=()
while IFS= read -r line; do
  [[ -n "${line}" ]] || continue
  path=${line%%:*}
  indexed+=("${path#/lib/modules/"${release}"/}")
  modules+=("$(modname "${path}")")
  for d in ${line#*:}; do depended+=("$(modname "$d")"); done
done <"${reldir}/modules.dep"
for f in "${kofiles[@]}"; do
  member "$f" "${indexed[@]}" ||
    die "${tree}: modules.dep does not list ${f}: the index is stale (depmod -b ${tree}/opt ${release})"
done
for m in "${modules[@]}"; do
  [[ "$m" =~ ^[A-Za-z0-9_]+$ ]] || die "${tree}: module name '$m' (from modules.dep) is not one modprobe takes"
done
for m in "${expect_loaded[@]}" "${expect_refused[@]}" "${load[@]}"; do
  member "$m" "${modules[@]}" || die "$m is not a module of the image (it has: ${modules[*]})"
done
if ((${#load[@]} == 0)); then
  for m in "${modules[@]}"; do
    member "$m" "${depended[@]}" || load+=("$m")
  done
fi
sweep=()
for m in "${expect_refused[@]}"; do
  member "$m" "${load[@]}" || sweep+=("$m")
done
((${#load[@]} > 0)) || die "${tree}: every module depends on another one (a cycle in modules.dep?): give --load M"

work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT

# The kernel.
if [[ -n "${kernel_deb}" ]]; then
  [[ -f "${kernel_deb}" ]] || die "${kernel_deb}: no such file"
  command -v dpkg-deb >/dev/null || die "needs dpkg-deb for --kernel-deb"
  mkdir "${work}/deb"
  dpkg-deb --fsys-tarfile "${kernel_deb}" | tar -x -C "${work}/deb" --wildcards './boot/vmlinuz-*' 2>/dev/null ||
    die "${kernel_deb}: holds no /boot/vmlinuz-* (is it a linux-image-<release> package?)"
  mapfile -t found < <(find "${work}/deb/boot" -maxdepth 1 -type f -name 'vmlinuz-*')
  ((${#found[@]} == 1)) || die "${kernel_deb}: expected one /boot/vmlinuz-*, found ${#found[@]}"
  kernel=${found[0]}
fi
[[ -f "${kernel}" && -s "${kernel}" ]] || die "${kernel}: no such file (or empty)"

# The initramfs: busybox, the image's release directory and firmware (where
# KMM's worker points firmware_class), the /init below and what it checks.
root=${work}/root
mkdir -p "${root}/bin" "${root}/lib/modules" "${root}/opt/lib/modules"
cp "${busybox}" "${root}/bin/busybox"
cp -a "${reldir}" "${root}/opt/lib/modules/"
ln -s "/opt/lib/modules/${release}" "${root}/lib/modules/${release}"
if [[ -d "${tree}/firmware" ]]; then
  cp -a "${tree}/firmware" "${root}/firmware"
fi
{
  echo "RELEASE='${release}'"
  echo "MODULES='${modules[*]}'"
  echo "LOAD='${load[*]}'"
  echo "SWEEP='${sweep[*]}'"
} >"${root}/kmod-check.conf"
cat >"${root}/init" <<'EOF'
#!/bin/busybox sh
# kmod-boot-check's /init: loads the image's modules, reports on the console.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
exec </dev/console >/dev/console 2>&1
# Kernel messages from here on would break the report's lines: they are
# printed after it, from the ring buffer.
echo 1 >/proc/sys/kernel/printk
dmesg -c >/dev/null
. /kmod-check.conf
say() { echo "KMOD-CHECK: $*"; }
finish() {
  dmesg | sed 's/^/kmod-check dmesg: /'
  say done
  sync
  poweroff -f
}
loaded() { grep -q "^$1 " /proc/modules; }
attempt() {
  if out=$(modprobe "$1" 2>&1); then
    if loaded "$1"; then
      say loaded "$1"
      reported="$reported $1 "
      return
    fi
    out="modprobe exited 0 but $1 is not in /proc/modules"
  fi
  out=$(echo "${out:-modprobe failed and said nothing}" | tr '\n' ' ')
  say refused "$1: ${out% }"
}
say init
kernel=$(uname -r)
say kernel "$kernel"
say sig_enforce "$(cat /sys/module/module/parameters/sig_enforce 2>/dev/null || echo unknown)"
if [ "$kernel" != "$RELEASE" ]; then
  say release-mismatch kernel "$kernel" image "$RELEASE"
  finish
fi
if [ -d /firmware ] && [ -e /sys/module/firmware_class/parameters/path ]; then
  echo -n /firmware >/sys/module/firmware_class/parameters/path
fi
reported=" "
for m in $LOAD; do attempt "$m"; done
for m in $SWEEP; do loaded "$m" || attempt "$m"; done
# /proc/modules lists the newest first: reversed, the kernel's load order.
tac /proc/modules >/tmp/modules
order=""
while read -r name rest; do
  case " $MODULES " in *" $name "*) order="$order $name" ;; esac
done </tmp/modules
for m in $order; do
  case "$reported" in *" $m "*) ;; *) say loaded "$m (as a dependency)" ;; esac
done
while read -r name rest; do
  case " $order " in *" $name "*) say module "$name $rest" ;; esac
done </tmp/modules
say order$order
taint=$(cat /proc/sys/kernel/tainted)
flags=""
i=0
for letter in P F S R M B U D A W C I O E L K X T; do
  [ $(((taint >> i) & 1)) = 1 ] && flags="$flags $letter"
  i=$((i + 1))
done
say taint "$taint$flags"
finish
EOF
chmod 755 "${root}/init"
(cd "${root}" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R +0:+0 --reproducible --quiet) |
  gzip -1 >"${work}/initramfs.gz"

# The boot.
append="console=ttyS0 panic=-1"
((sig_enforce)) && append+=" module.sig_enforce=1"
if [[ -z "${log}" ]]; then
  log=$(mktemp "${TMPDIR:-/tmp}/kmod-boot-check.XXXXXX.log")
  keep_log=0
else
  : >"${log}" || die "${log}: cannot write the console log there"
  keep_log=1
fi
echo "kmod-boot-check: booting ${kernel_deb:-${kernel}} with ${release}'s modules (${modules[*]}) under QEMU (TCG; ${append})..." >&2
start=${SECONDS}
rc=0
timeout -k 10 "${timeout_s}" qemu-system-x86_64 -accel tcg -m "${memory}" -smp 1 -nographic -no-reboot \
  -kernel "${kernel}" -initrd "${work}/initramfs.gz" -append "${append}" \
  </dev/null >"${work}/console" 2>&1 || rc=$?
tr -d '\r' <"${work}/console" >"${log}"
elapsed=$((SECONDS - start))

# The verdict, from the "KMOD-CHECK:" lines only.
marks=$(sed -n "s/^${PREFIX}//p" "${log}")
# The first mark KIND's text; the error of a refused module.
mark() { sed -n "s/^$1 //p" <<<"${marks}" | head -1; }
refusal() { sed -n "s/^refused $1: //p" <<<"${marks}" | head -1; }
grep "^${PREFIX}" "${log}" || true
failures=()
timed_out=0
((rc == 124 || rc == 137)) && timed_out=1
mismatch=$(mark release-mismatch)
if ! grep -qx init <<<"${marks}"; then
  if ((timed_out)); then
    failures+=("the kernel did not reach /init within ${timeout_s} s (--timeout)")
  else
    failures+=("the kernel never reached /init (QEMU exited with status ${rc}; is ${kernel_deb:-${kernel}} an x86-64 kernel?)")
  fi
elif [[ -n "${mismatch}" ]]; then
  read -r _ running _ image <<<"${mismatch}"
  failures+=("release mismatch: the kernel is ${running}, the image's modules are for ${image} (a node refuses an image built for another release); nothing was loaded")
else
  grep -qx 'done' <<<"${marks}" || if ((timed_out)); then
    failures+=("/init did not finish within ${timeout_s} s (--timeout)")
  else
    failures+=("/init did not finish (no 'done' on the console; QEMU exited with status ${rc})")
  fi
  read -r -a order <<<"$(sed -n 's/^order\( \|$\)//p' <<<"${marks}")"
  read -r taint taint_flags <<<"$(mark taint)"
  enforcing=$(mark sig_enforce)
  for m in "${expect_loaded[@]}"; do
    member "$m" "${order[@]}" && continue
    why=$(refusal "$m")
    failures+=("$m was expected loaded but is NOT loaded: ${why:-not among the modules loaded (--load ${load[*]}) nor their dependencies}")
  done
  if ((${#expect_loaded[@]} > 0 && ${#order[@]} == 0)); then
    failures+=("no module of the image was loaded (expected loaded: ${expect_loaded[*]})")
  elif ((${#expect_loaded[@]} > 0)) && [[ " ${taint_flags} " != *" O "* ]]; then
    failures+=("modules were loaded but the kernel is not tainted O (out-of-tree module): taint ${taint:-unknown} ${taint_flags}")
  fi
  for m in "${expect_refused[@]}"; do
    if member "$m" "${order[@]}"; then
      failures+=("$m was expected refused but LOADED")
    elif [[ -z "$(refusal "$m")" ]]; then
      failures+=("$m was expected refused but no load of it was reported")
    fi
  done
  while IFS= read -r line; do
    m=${line%%: *}
    member "$m" "${expect_refused[@]}" "${expect_loaded[@]}" || failures+=("$m was refused: ${line#*: }")
  done < <(sed -n 's/^refused //p' <<<"${marks}")
  if ((sig_enforce)) && [[ "${enforcing}" != Y ]]; then
    failures+=("module.sig_enforce=1 was given but the kernel reports sig_enforce=${enforcing:-unknown}")
  fi
fi

if ((${#failures[@]} == 0)); then
  echo "kmod boot check passed in ${elapsed} s: ${release} booted; loaded in order: ${order[*]:-none}; refused as expected: ${expect_refused[*]:-none}; taint ${taint} (${taint_flags:-no flags}); sig_enforce=${enforcing}"
  if ((keep_log)); then echo "console log: ${log}"; else rm -f "${log}"; fi
  exit 0
fi
echo "kmod boot check FAILED after ${elapsed} s: ${kernel_deb:-${kernel}} with ${tree}" >&2
for f in "${failures[@]}"; do
  echo "  - ${f}" >&2
done
echo "the console (last 40 lines; all of it in ${log}):" >&2
tail -40 "${log}" >&2
exit 1
