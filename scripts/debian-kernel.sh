#!/usr/bin/env bash
# Debian's own kernels as build inputs, fetched from the configured apt
# sources (never a URL in the tree):
#
#   scripts/debian-kernel.sh releases [N] [FLAVOUR]
#       the N newest kernel releases the archive carries for FLAVOUR
#       (default: 2, cloud-amd64), newest first, one per line
#       (6.1.0-57-cloud-amd64).
#   scripts/debian-kernel.sh fetch DIR RELEASE...
#       for each release, `apt-get download`s what `make -C ... M=` needs
#       (linux-headers-<release>, linux-headers-<abi>-common,
#       linux-kbuild-<major.minor>) and the kernel itself
#       (linux-image-<release>, for boot tests) into DIR/<release>/ under
#       stable names (headers.deb, common.deb, kbuild.deb, image.deb), and
#       writes DIR/<release>/build-args: the --build-arg options (one per
#       line) that give composer the directory and every .deb's sha256 and
#       sha512 (as the demo passes linux-source's). Files already there
#       are kept.
set -euo pipefail

die() { echo "debian-kernel: $*" >&2; exit 1; }

# Download directories of this run, removed however it ends.
TMPDIRS=()
trap 'rm -rf "${TMPDIRS[@]}"' EXIT

# Every release of FLAVOUR apt knows headers for, newest first.
list_releases() {
    apt-cache pkgnames linux-headers- \
        | sed -n "s/^linux-headers-\([0-9][0-9.]*-[0-9][0-9]*-${1}\)\$/\1/p" \
        | sort -V -r
}

# The N newest releases of FLAVOUR the archive has headers for.
releases() {
    local n=${1:-2} flavour=${2:-cloud-amd64}
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "releases: N must be a positive number, got '$n'"
    local found
    found=$(list_releases "$flavour" | head -n "$n")
    if [[ -z "$found" ]]; then
        # No package lists yet (a fresh machine): fetch them once.
        echo "debian-kernel: no linux-headers-*-${flavour} known to apt; updating the package lists once" >&2
        apt-get update -q >/dev/null || die "apt-get update failed"
        found=$(list_releases "$flavour" | head -n "$n")
    fi
    [[ -n "$found" ]] || die "no linux-headers-*-${flavour} in the configured apt sources"
    echo "$found"
}

# apt-get download PACKAGE into the current directory; one `apt-get
# update` when the lists are stale (a superseded version gives 404).
download() {
    local pkg=$1
    apt-get download -q "$pkg" >/dev/null 2>&1 && return 0
    if [[ -z "${UPDATED:-}" ]]; then
        UPDATED=1
        echo "debian-kernel: apt-get download $pkg failed; updating the package lists once" >&2
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt-get download -q "$pkg" >/dev/null && return 0
    fi
    die "cannot download $pkg: $(apt-get download "$pkg" 2>&1 | tail -1)"
}

fetch_one() {
    local dir=$1 release=$2
    [[ "$release" =~ ^([0-9]+\.[0-9]+)\.[0-9]+-[0-9]+-[a-z0-9-]+$ ]] \
        || die "'$release' is not a Debian kernel release (like 6.1.0-57-cloud-amd64)"
    local series=${BASH_REMATCH[1]}
    local abi
    abi=$(sed -E 's/^([0-9.]+-[0-9]+)-.*/\1/' <<<"$release")
    local out="$dir/$release"
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    local -A pkgs=(
        [headers]="linux-headers-$release"
        [common]="linux-headers-$abi-common"
        [kbuild]="linux-kbuild-$series"
        [image]="linux-image-$release"
    )
    local name tmp
    for name in headers common kbuild image; do
        [[ -s "$out/$name.deb" ]] && continue
        tmp=$(mktemp -d "$out/.download.XXXXXX")
        TMPDIRS+=("$tmp")
        pushd "$tmp" >/dev/null
        download "${pkgs[$name]}"
        popd >/dev/null
        mv "$tmp"/*.deb "$out/$name.deb"
        rmdir "$tmp"
        echo "debian-kernel: $release: ${pkgs[$name]} -> $out/$name.deb" >&2
    done
    # A temporary file of its own: several fetches may run at once.
    tmp=$(mktemp "$out/.build-args.XXXXXX")
    {
        echo "--build-arg=DEBIAN_DEBS=$out"
        for name in headers common kbuild; do
            local upper=${name^^}
            echo "--build-arg=DEBIAN_${upper}_SHA256=$(sha256sum "$out/$name.deb" | cut -d' ' -f1)"
            echo "--build-arg=DEBIAN_${upper}_SHA512=$(sha512sum "$out/$name.deb" | cut -d' ' -f1)"
        done
    } > "$tmp"
    chmod 644 "$tmp"
    mv "$tmp" "$out/build-args"
}

case "${1:-}" in
    releases) shift; releases "$@" ;;
    fetch)
        shift
        [[ $# -ge 2 ]] || die "usage: $0 fetch DIR RELEASE..."
        dir=$1; shift
        for r in "$@"; do fetch_one "$dir" "$r"; done
        ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
