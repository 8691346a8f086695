# Sourced by the benchmarks: Debian's current kernel package (thousands of
# signed modules and a vmlinuz), downloaded once and unpacked into
# $work/kimage. Expects $work to be set and to be the current directory.
if [ ! -d kimage/lib/modules ]; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  apt-get download "$pkg" >/dev/null 2>&1
  rm -rf kimage && dpkg-deb -x "$pkg"_*.deb kimage
fi
