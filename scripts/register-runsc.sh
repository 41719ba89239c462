#!/usr/bin/env bash
# Registers gVisor's runsc with the local Docker engine (run as root), for
# profiles with isolation = "gvisor". Idempotent: merges into
# /etc/docker/daemon.json keeping every other key, SIGHUPs dockerd (runtimes
# reload without a restart) and waits until `docker info` lists them.
#
#   runsc-none  runsc --network=none: loopback only (network mode none)
#   runsc-host  runsc --network=host: gVisor uses the network stack of the
#               container's own namespace (Docker's bridge networks and the
#               daemon's firewall rules apply as with runc)
#   runsc       runsc with its own network stack (netstack). Debian 12's runsc
#               (20221219) refuses every container with it on Linux >= 6.10
#               ("cannot run with network enabled in root network namespace":
#               gVisor issue #10704, fixed in release-20240807.0), which is why
#               sandpitd's default [isolation.runtimes] uses the two above.
#
# --netstack-wrapper also installs /usr/local/libexec/runsc-netfix and
# registers "runsc-netstack": netstack made to work on such kernels by hiding
# /proc/sys/net from runsc's start check when the container has a network
# namespace of its own. Not used by default.
#
# Usage: scripts/register-runsc.sh [--netstack-wrapper] [path-to-runsc]
# Install runsc first: apt-get install -y runsc (Debian 12 and later).
set -euo pipefail
WRAP=0
if [ "${1:-}" = --netstack-wrapper ]; then WRAP=1; shift; fi
RUNSC="${1:-$(command -v runsc || echo /usr/bin/runsc)}"
CONF="${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"
WRAPPER=/usr/local/libexec/runsc-netfix
[ -x "$RUNSC" ] || { echo "runsc not found at '$RUNSC' (apt-get install -y runsc)" >&2; exit 1; }

if [ "$WRAP" = 1 ]; then
  mkdir -p "$(dirname "$WRAPPER")"
  cat > "$WRAPPER.tmp" <<'WRAPPER_EOF'
#!/bin/bash
# runsc-netfix: lets Debian 12's runsc (20221219) use its own network stack on
# Linux >= 6.10. runsc's isRootNS() tests for /proc/sys/net/core/rmem_default,
# which Linux 19249c0724f2 made visible in every netns (gVisor issue #10704,
# fixed upstream in release-20240807.0). Only `runsc start` runs that check, so
# for `start` only: if the sandbox really has its own netns (inode differs from
# ours), run runsc in a private mount namespace with /proc/sys/net hidden under
# an empty tmpfs. If the sandbox is in the host netns (docker --network host),
# hide nothing, so runsc still refuses rather than steal the host's addresses.
RUNSC=__RUNSC__
args=("$@"); n=${#args[@]}
for ((i = 0; i < n; i++)); do
  if [ "${args[i]}" = start ]; then
    id="${args[n-1]}"
    pid="$("$RUNSC" "${args[@]:0:i}" state "$id" 2>/dev/null | sed -n 's/^ *"pid": *\([0-9][0-9]*\).*/\1/p' | head -n1)"
    if [ -n "$pid" ] && [ "$pid" -gt 0 ] && [ -e "/proc/$pid/ns/net" ] &&
       [ "$(stat -L -c %i "/proc/$pid/ns/net")" != "$(stat -L -c %i /proc/self/ns/net)" ]; then
      exec unshare --mount --propagation slave /bin/sh -c \
        'mount -t tmpfs -o ro,size=4k none /proc/sys/net && exec "$0" "$@"' "$RUNSC" "$@"
    fi
    break
  fi
done
exec "$RUNSC" "$@"
WRAPPER_EOF
  sed -i "s#__RUNSC__#$RUNSC#" "$WRAPPER.tmp"; chmod 755 "$WRAPPER.tmp"; mv "$WRAPPER.tmp" "$WRAPPER"
fi

mkdir -p "$(dirname "$CONF")"
[ -s "$CONF" ] || echo '{}' > "$CONF"
tmp="$(mktemp "$CONF.XXXXXX")"
if command -v python3 >/dev/null 2>&1; then
  python3 - "$CONF" "$RUNSC" "$WRAP" "$WRAPPER" >"$tmp" <<'PY'
import json, sys
conf, runsc, wrap, wrapper = sys.argv[1:5]
with open(conf) as f:
    d = json.load(f)
rt = d.setdefault("runtimes", {})
rt["runsc"] = {"path": runsc}
rt["runsc-none"] = {"path": runsc, "runtimeArgs": ["--network=none"]}
rt["runsc-host"] = {"path": runsc, "runtimeArgs": ["--network=host"]}
if wrap == "1":
    rt["runsc-netstack"] = {"path": wrapper}
json.dump(d, sys.stdout, indent=2, sort_keys=True)
sys.stdout.write("\n")
PY
elif command -v jq >/dev/null 2>&1; then
  jq -S --arg p "$RUNSC" --arg w "$WRAPPER" --argjson wrap "$WRAP" '.runtimes = ((.runtimes // {}) + {
      "runsc": {"path": $p},
      "runsc-none": {"path": $p, "runtimeArgs": ["--network=none"]},
      "runsc-host": {"path": $p, "runtimeArgs": ["--network=host"]}}
      + (if $wrap == 1 then {"runsc-netstack": {"path": $w}} else {} end))' "$CONF" >"$tmp"
else
  rm -f "$tmp"; echo "need python3 or jq" >&2; exit 1
fi

want='"runsc-host"'; [ "$WRAP" = 1 ] && want='"runsc-netstack"'
if cmp -s "$tmp" "$CONF"; then
  rm -f "$tmp"; echo "daemon.json already up to date"
  if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q "$want"; then
    echo "runtimes already loaded by dockerd"; exit 0
  fi
else
  cp -p "$CONF" "$CONF.bak" 2>/dev/null || true
  chmod 644 "$tmp"; mv "$tmp" "$CONF"; echo "daemon.json updated"
fi
pid="$(pidof dockerd || true)"
if [ -z "$pid" ]; then echo "dockerd not running; runtimes load when it starts"; exit 0; fi
kill -HUP $pid   # reload config; invalid JSON would be logged by dockerd and ignored
for _ in $(seq 1 50); do
  rts="$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)"
  if grep -q '"runsc-none"' <<<"$rts" && grep -q '"runsc-host"' <<<"$rts" && grep -q "$want" <<<"$rts"; then
    echo "registered: $rts"; exit 0
  fi
  sleep 0.2
done
echo "dockerd did not pick up the runsc runtimes (see dockerd's log)" >&2; exit 1
