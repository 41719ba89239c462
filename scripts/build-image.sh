#!/usr/bin/env bash
# Builds a sandbox image with no registry, loaded with `docker import`. Used by
# the tests, the benchmarks and the README walk-through.
#
#   scripts/build-image.sh [--recipe NAME] [TAG] [LABEL=VALUE ...]
#
# Recipes:
#
#   tiny (the default)   A root filesystem of a few coreutils, dash and their
#                        shared libraries, copied from this machine's own
#                        binaries. TAG defaults to sandpit/base:local.
#
#   python-data          A Debian root filesystem made by mmdebstrap from the
#                        host's apt sources (no registry): python3, pandas,
#                        scikit-learn and the Jupyter notebook server.
#                        TAG defaults to sandpit/python-data:local. Its CMD
#                        runs the notebook server in the foreground on
#                        127.0.0.1:8888; it runs as any user with a
#                        read-only root, given a writable /tmp (HOME and the
#                        Jupyter, IPython and matplotlib directories are there).
#                        Needs root (mmdebstrap's root mode) or a user that
#                        mmdebstrap's unshare mode works for; mmdebstrap is
#                        installed with apt-get if missing and we are root.
#
# Labels are set on the image. The tag is the only thing written to stdout.
#
# Environment (python-data):
#   SANDPIT_APT_CACHE       a directory that keeps the downloaded .deb files
#                           between runs (e.g. /var/cache/sandpit-apt, cached
#                           by CI). After a successful build it holds exactly
#                           the packages of that image. No whitespace.
#   SANDPIT_APT_SUITE       the Debian suite (default: the host's codename).
#   SANDPIT_APT_SOURCES     an apt sources file (one-line or deb822) or a
#                           mirror URL (default: the host's enabled sources
#                           from /etc/apt/sources.list{,.d/*.list,.d/*.sources}).
#   SANDPIT_EXTRA_PACKAGES  more Debian packages, comma or space separated
#                           (e.g. python3-matplotlib).
set -euo pipefail

die() { echo "build-image.sh: $*" >&2; exit 1; }

recipe=tiny
case "${1:-}" in
  --recipe) [ $# -ge 2 ] || die "--recipe needs a name (tiny, python-data)"; recipe=$2; shift 2 ;;
  --recipe=*) recipe=${1#--recipe=}; shift ;;
esac

build_tiny() {
  local tag=$1; shift
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
}

ensure_mmdebstrap() {
  command -v mmdebstrap >/dev/null && return
  [ "$(id -u)" = 0 ] || die "mmdebstrap is missing: apt-get install mmdebstrap"
  echo "build-image.sh: installing mmdebstrap" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q mmdebstrap >&2 || { apt-get update -q >&2 && apt-get install -y -q mmdebstrap >&2; }
}

build_python_data() {
  local tag=$1; shift
  ensure_mmdebstrap

  local suite=${SANDPIT_APT_SUITE:-}
  [ -n "$suite" ] || suite=$( . /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}" )
  [ -n "$suite" ] || die "cannot tell the host's Debian suite: set SANDPIT_APT_SUITE"

  # The host's apt sources, as they are (mmdebstrap pastes a file given as a
  # mirror into the chroot's sources). Files with no entries are left out.
  local mirrors=() f
  if [ -n "${SANDPIT_APT_SOURCES:-}" ]; then
    mirrors=("$SANDPIT_APT_SOURCES")
  else
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
      if [ -f "$f" ] && grep -qvE '^[[:space:]]*(#|$)' "$f"; then mirrors+=("$f"); fi
    done
  fi

  # OpenBLAS (not the reference BLAS) for numpy, scipy and sklearn.
  local pkgs=python3,python3-pandas,python3-sklearn,python3-notebook,jupyter-notebook,libopenblas0-pthread
  local extra=${SANDPIT_EXTRA_PACKAGES:-}
  extra=$(echo "$extra" | tr ' ,' '\n\n' | grep -v '^$' | paste -sd, -) || true
  [ -z "$extra" ] || pkgs+=",$extra"

  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  case "$work" in *[[:space:]]*) die "TMPDIR may not contain whitespace";; esac

  # python3-scipy (needed by sklearn) depends on python3-pythran, a compiler
  # that scipy only uses when it is built; pythran brings g++, boost and the
  # Python headers, over half a gigabyte. An empty package of that name
  # stands in for it.
  mkdir -p "$work/pythran/DEBIAN"
  cat > "$work/pythran/DEBIAN/control" <<'CONTROL'
Package: python3-pythran
Version: 0~sandpit1
Architecture: all
Maintainer: Sandpit <sandpit@localhost>
Section: oldlibs
Priority: optional
Description: empty stand-in for pythran (scipy needs it only to be built)
 Installed by sandpit's scripts/build-image.sh so that python3-scipy does
 not pull a C++ toolchain into a runtime image.
CONTROL
  dpkg-deb --root-owner-group -Zgzip --build "$work/pythran" "$work/python3-pythran_0~sandpit1_all.deb" >/dev/null
  pkgs+=",$work/python3-pythran_0~sandpit1_all.deb"

  # The essential set (coreutils, dash, bash, ...) plus the packages and their
  # dependencies, without recommends (mmdebstrap's default) and without apt.
  # dpkg need not fsync a root filesystem that is thrown away if this fails.
  # Merged /usr is set up directly (usr-is-merged), not by usrmerge and perl.
  local opts=(
    --variant=essential --include="$pkgs" --format=tar
    --hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr
    # apt reads the stand-in .deb here, dpkg in the chroot at the same path.
    --setup-hook="mkdir -p \"\$1$work\" && cp $work/python3-pythran_0~sandpit1_all.deb \"\$1$work/\""
    --aptopt='Acquire::Languages "none"'
    --dpkgopt=force-unsafe-io
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
  )
  # The parts of the host's apt configuration a download needs (mmdebstrap
  # does not read the host's apt.conf.d). Dropped from the image below.
  local cvu='' cdate='' hproxy='' sproxy=''
  eval "$(apt-config shell cvu Acquire::Check-Valid-Until cdate Acquire::Check-Date \
    hproxy Acquire::http::Proxy sproxy Acquire::https::Proxy 2>/dev/null)" || true
  [ -z "$cvu" ] || opts+=(--aptopt="Acquire::Check-Valid-Until \"$cvu\"")
  [ -z "$cdate" ] || opts+=(--aptopt="Acquire::Check-Date \"$cdate\"")
  [ -z "$hproxy" ] || opts+=(--aptopt="Acquire::http::Proxy \"$hproxy\"")
  [ -z "$sproxy" ] || opts+=(--aptopt="Acquire::https::Proxy \"$sproxy\"")

  local cache=${SANDPIT_APT_CACHE:-}
  if [ -n "$cache" ]; then
    mkdir -p "$cache"
    cache=$(cd "$cache" && pwd)
    case "$cache" in *[[:space:]]*) die "SANDPIT_APT_CACHE may not contain whitespace";; esac
    # Seed the chroot's package cache from ours (apt reuses a .deb whose hash
    # matches the index), keep what the essential step installed, and before
    # mmdebstrap's cleanup empties it, drop the .debs no longer installed and
    # copy the rest out.
    opts+=(
      --skip=essential/unlink
      --setup-hook='mkdir -p "$1/var/cache/apt/archives/partial"'
      --setup-hook="sync-in $cache /var/cache/apt/archives/"
      --customize-hook='cd "$1/var/cache/apt/archives" &&
        chroot "$1" dpkg-query -W -f "\${Package}_\${Version}_\${Architecture}.deb\n" | sed "s/:/%3a/" > "$1/tmp/.keep" &&
        for f in *.deb; do grep -qxF "$f" "$1/tmp/.keep" || rm -f "$f"; done; rm -f "$1/tmp/.keep"'
      --customize-hook="sync-out /var/cache/apt/archives $work/debs"
    )
  fi
  opts+=(
    --customize-hook="rm -rf \"\$1$work\""
    --customize-hook='rm -f "$1/etc/apt/apt.conf.d/99mmdebstrap"'
    --customize-hook='rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/root/.cache'
    # / must be 0755, or a file server that drops root's privileges (gVisor's
    # gofer) cannot look into it; /tmp is the sandbox's tmpfs, 1777 anyway.
    --customize-hook='chmod 0755 "$1" && chmod 1777 "$1/tmp"'
  )

  mmdebstrap "${opts[@]}" "$suite" "$work/rootfs.tar" "${mirrors[@]}" >&2

  if [ -n "$cache" ]; then
    for f in "$cache"/*.deb; do
      [ -e "$f" ] || continue
      [ -e "$work/debs/${f##*/}" ] || rm -f "$f"
    done
    for f in "$work"/debs/*.deb; do
      [ -e "$f" ] || continue
      [ -e "$cache/${f##*/}" ] || mv "$f" "$cache/"
    done
  fi

  # The server runs in the foreground, on 127.0.0.1:8888 only (no other port
  # if that one is taken), with no token or password: the sandbox's network
  # policy decides who reaches it. Everything it writes goes under /tmp.
  changes=(
    --change 'CMD ["jupyter-notebook","--ip=127.0.0.1","--port=8888","--port-retries=0","--no-browser","--notebook-dir=/tmp","--NotebookApp.token=","--NotebookApp.password="]'
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change 'ENV LANG=C.UTF-8'
    --change 'ENV HOME=/tmp'
    --change 'ENV XDG_CACHE_HOME=/tmp/.cache'
    --change 'ENV JUPYTER_CONFIG_DIR=/tmp/.jupyter'
    --change 'ENV JUPYTER_DATA_DIR=/tmp/.local/share/jupyter'
    --change 'ENV JUPYTER_RUNTIME_DIR=/tmp/.local/share/jupyter/runtime'
    --change 'ENV IPYTHONDIR=/tmp/.ipython'
    --change 'ENV MPLCONFIGDIR=/tmp/.config/matplotlib'
    --change 'ENV PYTHONDONTWRITEBYTECODE=1'
    --change 'ENV PYDEVD_DISABLE_FILE_VALIDATION=1'
    --change 'WORKDIR /tmp'
  )
  for l in "$@"; do changes+=(--change "LABEL $l"); done
  docker import "${changes[@]}" "$work/rootfs.tar" "$tag" >/dev/null
}

case "$recipe" in
  tiny)
    tag=${1:-sandpit/base:local}
    shift || true
    build_tiny "$tag" "$@"
    ;;
  python-data)
    tag=${1:-sandpit/python-data:local}
    shift || true
    build_python_data "$tag" "$@"
    ;;
  *) die "unknown recipe '$recipe' (tiny, python-data)" ;;
esac
echo "$tag"
