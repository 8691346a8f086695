#!/usr/bin/env bash
# Installs the Debian packages composer's demo and tests need, only those
# missing, and says what it changed.
#
#   scripts/setup.sh PACKAGE...
#
# A machine image may carry a package at a version that no configured apt
# source has (a backport installed by hand), which Breaks: what the project
# needs. The known case: `qemu-utils 1:10.x~bpo12` against Debian 12's
# `qemu-system-x86` 1:7.2, which needs `qemu-system-common` 1:7.2. apt will not
# downgrade on its own, so when the plain install cannot be resolved this
# script looks for installed packages that are (a) named in apt's "unmet
# dependencies" report or built from the same source package as a missing
# one, and (b) at a version newer than any archive carries; it takes the archive's newest
# version of each (`--allow-downgrades PKG=VERSION`), names every change, and
# installs. When that cannot be resolved either, it stops with apt's message
# and a hint.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "setup: installing: ${missing[*]}"
apt-get update -qq

# The installed version of PKG when no configured source carries it; empty
# otherwise.
orphan_version() {
  local pkg=$1 installed
  installed=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || return 0
  [[ -n "$installed" ]] || return 0
  if ! apt-cache madison "$pkg" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF -- "$installed"; then
    echo "$installed"
  fi
}

# The newest version of PKG an archive carries.
archive_version() {
  apt-cache madison "$1" 2>/dev/null | awk -F'|' 'NR==1 {gsub(/ /, "", $2); print $2}'
}

# Installed packages that may stand in the way: named at the start of a line
# of apt's report, or built from the same source as a missing package.
suspects() {
  local report=$1 p src
  sed -n 's/^ \{1,\}\([a-z0-9][a-z0-9+.-]*\) : .*/\1/p' <<<"$report"
  for p in "${missing[@]}"; do
    src=$(apt-cache show --no-all-versions "$p" 2>/dev/null | sed -n 's/^Source: \([^ ]*\).*/\1/p' | head -1)
    [[ -n "$src" ]] || src=$p
    dpkg-query -W -f='${binary:Package} ${source:Package} ${Status}\n' 2>/dev/null |
      awk -v s="$src" '$2 == s && $NF == "installed" {sub(/:.*/, "", $1); print $1}'
  done
}

if report=$(apt-get install -s -y "${missing[@]}" 2>&1); then
  apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi

downgrades=()
while read -r p; do
  [[ -n "$p" ]] || continue
  have=$(orphan_version "$p")
  [[ -n "$have" ]] || continue
  want=$(archive_version "$p")
  [[ -n "$want" ]] || continue
  # An older orphan is upgraded by apt itself; only a newer one blocks it.
  dpkg --compare-versions "$have" gt "$want" || continue
  echo "setup: ${p} ${have} comes from no configured apt source and blocks the install: taking the archive's ${want} (a downgrade)"
  downgrades+=("${p}=${want}")
done < <(suspects "$report" | sort -u)

if ((${#downgrades[@]} > 0)) &&
  report=$(apt-get install -s -y --allow-downgrades "${downgrades[@]}" "${missing[@]}" 2>&1); then
  apt-get install -y -qq --allow-downgrades "${downgrades[@]}" "${missing[@]}" >/dev/null
  echo "setup: changed: ${downgrades[*]}"
  exit 0
fi

echo "$report" | grep -vE '^(Inst|Conf|Remv) ' >&2
cat >&2 <<EOF
setup: apt cannot install: ${missing[*]}
hint: an installed package conflicts with one of these; 'apt-cache policy NAME' shows
      where each installed version comes from, and 'apt-get install --allow-downgrades
      NAME/bookworm ...' takes the archive's version.
EOF
exit 1
