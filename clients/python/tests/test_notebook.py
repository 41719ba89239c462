"""The README's notebook example, on the python-data image: a CSV in, pandas
over it, results out, and the Jupyter server reached through a forwarded port.

The image takes minutes to build (`scripts/build-image.sh --recipe
python-data`, which .ci/run does before the tests), so this is skipped where
it is missing."""

from __future__ import annotations

import csv
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import harness
import sandpit

pytestmark = pytest.mark.skipif(
    subprocess.run(["docker", "image", "inspect", harness.NOTEBOOK_IMAGE], capture_output=True).returncode != 0,
    reason=f"{harness.NOTEBOOK_IMAGE} is not built (scripts/build-image.sh --recipe python-data)",
)

ANALYSIS = """
import pandas as pd
df = pd.read_csv('/workspace/population.csv')
summary = df.groupby('area')['people'].sum()
print(summary.to_string())
summary.to_csv('/workspace/results/by_area.csv')
"""


def test_the_notebook_walkthrough(alice: sandpit.Client, approver: sandpit.Client, tmp_path: Path) -> None:
    exp = alice.register(title="Occupation coding", purpose="Classify free-text occupations",
                         classification="OFFICIAL", ai_tools=["pandas"])  # fmt: skip
    data = tmp_path / "population.csv"
    data.write_text("area,people\nA,100\nB,250\nA,50\n")
    with alice.create(experiment=exp, profile=harness.NOTEBOOK_PROFILE, classification="OFFICIAL", ttl="10m") as sb:
        t = sb.upload(data, "/workspace/")
        assert t.file_sha256 and len(t.sha256) == 64
        sb.exec("mkdir -p /workspace/results", check=True)
        streamed: list = []
        r = sb.exec(["python3", "-c", ANALYSIS], on_stdout=streamed.append, check=True)
        assert r.stdout_text.split() == ["area", "A", "150", "B", "250"], r
        assert b"".join(streamed) == r.stdout

        got = sb.download("/workspace/results", tmp_path / "results")
        assert got.local_path == str(tmp_path / "results")
        with open(tmp_path / "results" / "by_area.csv") as f:
            assert list(csv.reader(f)) == [["area", "people"], ["A", "150"], ["B", "250"]]

        with sb.port_forward(8888) as pf:
            deadline = time.monotonic() + 90
            while True:  # the server may still be starting
                try:
                    with urllib.request.urlopen(pf.url + "api/contents", timeout=30) as resp:
                        listing = json.load(resp)
                    break
                except (urllib.error.URLError, ConnectionError, OSError):
                    assert time.monotonic() < deadline, f"no notebook server: {pf.errors}"
                    time.sleep(1)
            assert {"population.csv", "results"} <= {c["name"] for c in listing["content"]}, listing
    closed = approver.close_experiment(exp, "succeeded", "pandas was enough")
    assert closed.status == "closed"
