#!/usr/bin/env bash
# Runs the Python SDK's tests against a real sandpitd and the real Docker
# engine:
#
#   clients/python/run-tests.sh [PYTEST ARGS...]      e.g. -k exec -x
#
# 1. a virtualenv (cached at $SANDPIT_PY_VENV, default
#    ${XDG_CACHE_HOME:-~/.cache}/sandpit/python-venv; python3-venv is
#    installed with apt-get if `python3 -m venv` cannot make one and we are root),
# 2. `pip install ./clients/python` and requirements-dev.txt (pytest, the
#    pinned grpcio-tools the generated-code check needs),
# 3. `cargo build --bin sandpitd` unless SANDPITD_BIN names a daemon binary
#    (cargo rebuilds only what changed),
# 4. pytest, with a run id every Docker object of the run is labelled with
#    (sandpit.test-run=<id>), then a check that none of them is left.
#
# Environment: PYTHON (default python3), SANDPIT_PY_VENV, SANDPITD_BIN,
# SANDPIT_PYTEST_TIMEOUT (seconds, default 900).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-python3}
venv=${SANDPIT_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sandpit/python-venv}

echo "--- python venv ($venv)"
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$py" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 leaves venv and pip out: python3-venv brings them.
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "run-tests.sh: $py -m venv failed; installing python3-venv python3-pip" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq python3-venv python3-pip >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq python3-venv python3-pip >/dev/null; }
      "$py" -m venv "$venv"
    else
      echo "run-tests.sh: $py -m venv failed: install python3-venv" >&2
      exit 1
    fi
  fi
fi
"$venv/bin/python" --version
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements-dev.txt"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$here"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$here"
rm -rf "$here/build" "$here"/*.egg-info

# The installed package, not the source tree, imports with its generated code and py.typed.
(cd / && "$venv/bin/python" - <<'PY'
import os, sandpit
from sandpit._proto.sandpit.v1 import sandbox_pb2_grpc  # noqa: F401
root = os.path.dirname(sandpit.__file__)
assert "site-packages" in root, root
for f in ("py.typed", "_proto/sandpit/v1/sandbox_pb2.pyi"):
    assert os.path.exists(os.path.join(root, f)), f
print("installed sandpit", sandpit.__version__, "from", root)
PY
)

echo "--- sandpitd"
if [ -n "${SANDPITD_BIN:-}" ]; then
  echo "using SANDPITD_BIN=$SANDPITD_BIN"
else
  (cd "$repo" && cargo build --locked --bin sandpitd)
  export SANDPITD_BIN=$repo/target/debug/sandpitd
fi
command -v busybox >/dev/null || [ -x /bin/busybox ] || {
  echo "run-tests.sh: the tests' image is made from a static busybox: apt-get install busybox-static" >&2
  exit 1
}

echo "--- pytest"
run=pytest-$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')
export SANDPIT_PYTEST_RUN=$run SANDPIT_REQUIRE_CODEGEN_CHECK=1
cd "$here"
status=0
# SIGTERM first: the tests' conftest turns it into an interrupt, so that
# pytest still runs its finalizers (they remove the run's containers).
timeout -s TERM -k 60 "${SANDPIT_PYTEST_TIMEOUT:-900}" \
  "$venv/bin/python" -m pytest -p no:cacheprovider "$@" || status=$?

echo "--- nothing left behind in Docker (label sandpit.test-run=$run)"
filter="label=sandpit.test-run=$run"
left=$( { docker ps -aq --filter "$filter"; docker network ls -q --filter "$filter"; \
          docker volume ls -q --filter "$filter"; docker images -q --filter "$filter"; } | wc -l)
if [ "$left" -ne 0 ]; then
  echo "run-tests.sh: the run left $left Docker objects; removing them" >&2
  docker ps -a --filter "$filter" >&2
  ids=$(docker ps -aq --filter "$filter"); [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  ids=$(docker network ls -q --filter "$filter"); [ -z "$ids" ] || docker network rm $ids >/dev/null
  ids=$(docker volume ls -q --filter "$filter"); [ -z "$ids" ] || docker volume rm -f $ids >/dev/null
  ids=$(docker images -q --filter "$filter" | sort -u); [ -z "$ids" ] || docker rmi -f $ids >/dev/null
  [ "$status" -ne 0 ] || status=1
else
  echo "clean"
fi
exit "$status"
