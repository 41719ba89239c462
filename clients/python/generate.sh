#!/usr/bin/env bash
# Regenerates sandpit/_proto from crates/sandpit-proto/proto with the pinned
# grpcio-tools (requirements-dev.txt). Pass --check to only compare.
#
#   clients/python/generate.sh [--check]
#
# Uses $PYTHON (default python3) if it has the pinned grpcio-tools, else a
# throwaway venv with it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pin=$(grep -E '^grpcio-tools==' "$here/requirements-dev.txt")
py=${PYTHON:-python3}
if ! "$py" -c "import grpc_tools, importlib.metadata as m, sys; sys.exit(m.version('grpcio-tools') != '${pin#grpcio-tools==}')" 2>/dev/null; then
  venv=$(mktemp -d)
  trap 'rm -rf "$venv"' EXIT
  "$py" -m venv "$venv" >&2
  "$venv/bin/pip" install -q "$pin" >&2
  py=$venv/bin/python
fi
exec "$py" "$here/tools/gen_protos.py" "$@"
