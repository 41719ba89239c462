#!/usr/bin/env python3
"""Regenerate ``sandpit/_proto`` from the daemon's ``.proto`` files.

    python tools/gen_protos.py            # rewrite sandpit/_proto in place
    python tools/gen_protos.py --check    # exit 1 if the committed files differ
    python tools/gen_protos.py --out DIR  # write the tree under DIR instead

The code is made by ``grpc_tools.protoc`` (the grpcio-tools version pinned in
``requirements-dev.txt``): ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``
for every file in ``crates/sandpit-proto/proto/sandpit/v1``. protoc names
the modules after the proto package, ``sandpit.v1``, which would collide
with this package's own name, so the imports between the generated modules
are rewritten to ``sandpit._proto.sandpit.v1``. Nothing else is changed:
the descriptors keep their file names (``sandpit/v1/sandbox.proto``), as the
daemon's reflection serves them.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent  # clients/python
REPO_ROOT = PACKAGE_ROOT.parent.parent
PROTO_ROOT = REPO_ROOT / "crates" / "sandpit-proto" / "proto"
TARGET = PACKAGE_ROOT / "sandpit" / "_proto"

# Package __init__ files the generator owns too, so that --check covers the whole tree.
INIT_FILES = {
    "__init__.py": '"""Code generated from crates/sandpit-proto/proto by tools/gen_protos.py. DO NOT EDIT."""\n',
    "sandpit/__init__.py": "",
    "sandpit/v1/__init__.py": "",
}

_IMPORT = re.compile(r"^from sandpit\.v1 import ", re.MULTILINE)
_MODULE_NAME = re.compile(r"'sandpit\.v1\.(\w+_pb2)'")


def _rewrite(text: str) -> str:
    text = _IMPORT.sub("from sandpit._proto.sandpit.v1 import ", text)
    return _MODULE_NAME.sub(r"'sandpit._proto.sandpit.v1.\1'", text)


def generate(out: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Writes the generated tree (what ``sandpit/_proto`` holds) under ``out``.

    Returns the files written, relative to ``out``.
    """
    from grpc_tools import protoc  # a dev dependency: requirements-dev.txt

    protos = sorted((proto_root / "sandpit" / "v1").glob("*.proto"))
    if not protos:
        raise SystemExit(f"gen_protos: no .proto files under {proto_root / 'sandpit' / 'v1'}")
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *(str(p.relative_to(proto_root)) for p in protos),
        ]
        cwd = os.getcwd()
        os.chdir(proto_root)  # relative names: the descriptors carry sandpit/v1/x.proto
        try:
            rc = protoc.main(args)
        finally:
            os.chdir(cwd)
        if rc != 0:
            raise SystemExit(f"gen_protos: protoc failed ({rc})")
        written = []
        out.mkdir(parents=True, exist_ok=True)
        for rel, content in INIT_FILES.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(content)
            written.append(Path(rel))
        for src in sorted(Path(raw, "sandpit", "v1").iterdir()):
            rel = Path("sandpit", "v1", src.name)
            (out / rel).write_text(_rewrite(src.read_text()))
            written.append(rel)
    return written


def _tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def differences(expected: Path, actual: Path) -> list[str]:
    """What differs between two generated trees, as unified diffs and lists of missing files."""
    want, have = _tree(expected), _tree(actual)
    out = [f"missing: {p}" for p in sorted(want - have)]
    out += [f"not generated (stale?): {p}" for p in sorted(have - want)]
    for rel in sorted(want & have):
        if not filecmp.cmp(expected / rel, actual / rel, shallow=False):
            diff = difflib.unified_diff(
                (actual / rel).read_text().splitlines(keepends=True),
                (expected / rel).read_text().splitlines(keepends=True),
                f"committed/{rel}",
                f"generated/{rel}",
            )
            out.append("".join(list(diff)[:60]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed files; change nothing")
    ap.add_argument("--out", type=Path, help="write here instead of sandpit/_proto")
    ap.add_argument("--proto-root", type=Path, default=PROTO_ROOT)
    args = ap.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp), args.proto_root)
            diffs = differences(Path(tmp), TARGET)
        if diffs:
            print("sandpit/_proto is out of date; run clients/python/generate.sh\n", file=sys.stderr)
            print("\n".join(diffs), file=sys.stderr)
            return 1
        print("sandpit/_proto is up to date")
        return 0
    out = args.out or TARGET
    if out == TARGET and TARGET.exists():
        shutil.rmtree(TARGET)
    for rel in generate(out, args.proto_root):
        print(out / rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
