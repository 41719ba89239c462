#!/usr/bin/env bash
# Builds a tiny sandbox image from this machine's own binaries, with no registry:
# a root filesystem of a few coreutils, dash and their shared libraries,
# loaded with `docker import`. Used by the tests, the benchmarks and the README
# walk-through.
#
#   scripts/build-image.sh [TAG] [LABEL=VALUE ...]
#
# TAG defaults to sandpit/base:local. Labels are set on the image.
set -euo pipefail

tag=${1:-sandpit/base:local}
shift || true

bins=(sh dash bash sleep cat echo id ls env head tail true false printf mkdir rm touch uname wc sha256sum grep dd yes kill ps timeout busybox)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# mktemp makes it 0700: the image's / must be 0755, or a file server that
# drops root's privileges (gVisor's gofer) cannot look into it.
chmod 755 "$root"
mkdir -p "$root"/{bin,tmp,etc,proc,sys,dev}
chmod 1777 "$root/tmp"
for b in "${bins[@]}"; do
  path=$(type -P "$b" 2>/dev/null) || continue
  [ -x "$path" ] || continue
  real=$(readlink -f "$path")
  cp "$real" "$root/bin/$b"
  # Copy every shared library the binary loads, at the same path.
  # (A static binary has none: ldd then fails, which is fine.)
  { ldd "$real" 2>/dev/null || true; } | { grep -oE '/[^ ]+' || true; } | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

changes=(--change 'CMD ["/bin/sleep","infinity"]' --change 'ENV PATH=/bin')
for l in "$@"; do changes+=(--change "LABEL $l"); done
tar -C "$root" -c . | docker import "${changes[@]}" - "$tag" >/dev/null
echo "$tag"
