"""Test harness: a busybox image built here, a real ``sandpitd`` on port 0
with a temporary data directory, and everything labelled and removed.

Mirrors ``tests/it/support.rs``: every Docker object the daemon makes
carries ``sandpit.test-run=<run id>`` (the config's ``[labels]``), so does
the image built here, and all of them are removed when the session ends.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional

if TYPE_CHECKING:
    import sandpit

TEST_RUN_LABEL = "sandpit.test-run"

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent  # clients/python
REPO_ROOT = PACKAGE_ROOT.parent.parent

# Tokens of the identities every test daemon knows.
TEAM_A = "token-team-a"  # alice, requester, team-a
TEAM_B = "token-team-b"  # bob, requester, team-b
OPERATOR = "token-operator"  # olive, operator
AUDITOR = "token-auditor"  # ada, auditor (team alg)
APPROVER = "token-approver"  # amir, approver (team alg)
APPROVER_A = "token-approver-a"  # anna, approver in team-a: may not approve team-a's work

# The profiles the tests use ({image} is this run's image).
WEB_PROFILE = "py-web"
SENSITIVE_PROFILE = "py-sensitive"
CAPPED_PROFILE = "py-capped"
SEALED_PROFILE = "py-sealed"
NOTEBOOK_PROFILE = "py-notebook"
#: Built by `scripts/build-image.sh --recipe python-data` (minutes; .ci/run builds it): not this run's.
NOTEBOOK_IMAGE = "sandpit/python-data:local"

_PROFILES = {
    # A web server on the sandbox's loopback, for port forwarding; no network.
    WEB_PROFILE: """
isolation = "container"
description = "python SDK tests: busybox httpd on 127.0.0.1:8080, no network"
max_classification = "OFFICIAL"
images = ["{image}"]
command = ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/tmp"]
[resources]
cpus = 0.5
memory = "64MiB"
pids = 64
tmpfs = "32MiB"
[lifetime]
default_ttl = "5m"
max_ttl = "10m"
max_lifetime = "15m"
[network]
mode = "none"
[port_forward]
ports = [8080, 8081]
""",
    SENSITIVE_PROFILE: """
isolation = "container"
description = "python SDK tests: OFFICIAL-SENSITIVE, needs an approved experiment; httpd on 127.0.0.1:8080"
max_classification = "OFFICIAL-SENSITIVE"
images = ["{image}"]
command = ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/tmp"]
[resources]
cpus = 0.5
memory = "64MiB"
pids = 64
tmpfs = "16MiB"
[lifetime]
default_ttl = "5m"
max_ttl = "10m"
max_lifetime = "15m"
[network]
mode = "none"
[file_transfer]
copy_out = true
[port_forward]
ports = [8080]
""",
    SEALED_PROFILE: """
isolation = "container"
description = "python SDK tests: no copy-out"
max_classification = "OFFICIAL"
images = ["{image}"]
command = ["sleep", "100000"]
[lifetime]
default_ttl = "5m"
max_ttl = "10m"
max_lifetime = "15m"
[network]
mode = "none"
[file_transfer]
copy_in = false
copy_out = false
""",
    # As sandbox-profiles/official-notebook.toml, smaller.
    NOTEBOOK_PROFILE: """
isolation = "container"
description = "python SDK tests: Jupyter with pandas on 127.0.0.1:8888, no network"
max_classification = "OFFICIAL"
images = ["sandpit/python-data:local"]
command = ["jupyter-notebook", "--ip=127.0.0.1", "--port=8888", "--port-retries=0", "--no-browser",
           "--notebook-dir=/workspace", "--NotebookApp.token=", "--NotebookApp.password="]
workspace = true
[resources]
cpus = 1.0
memory = "1GiB"
pids = 256
tmpfs = "256MiB"
[lifetime]
default_ttl = "10m"
max_ttl = "10m"
max_lifetime = "15m"
[network]
mode = "none"
[port_forward]
ports = [8888]
""",
    CAPPED_PROFILE: """
isolation = "container"
description = "python SDK tests: exec output capped at 1 KiB"
max_classification = "OFFICIAL"
images = ["{image}"]
command = ["sleep", "100000"]
[resources]
cpus = 0.5
memory = "64MiB"
pids = 64
tmpfs = "16MiB"
[lifetime]
default_ttl = "5m"
max_ttl = "10m"
max_lifetime = "15m"
[network]
mode = "none"
[file_transfer]
max_exec_output = "1KiB"
""",
}


def sha256(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


def sandpitd_binary() -> Path:
    """``$SANDPITD_BIN``, else ``target/debug/sandpitd`` of this repository (built if missing)."""
    env = os.environ.get("SANDPITD_BIN")
    if env:
        path = Path(env)
        if not path.is_file():
            raise RuntimeError(f"SANDPITD_BIN={env} is not a file")
        return path
    path = REPO_ROOT / "target" / "debug" / "sandpitd"
    if not path.is_file():
        subprocess.run(["cargo", "build", "--bin", "sandpitd", "--bin", "sandpit"], cwd=REPO_ROOT, check=True)
    return path


def build_image(run: str) -> str:
    """A tiny image of static busybox (``/bin/busybox`` and a link for each
    applet), loaded with ``docker import`` as ``scripts/build-image.sh`` does:
    no registry is needed. Labelled with the run, removed with it."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise RuntimeError("busybox is missing: apt-get install busybox-static")
    tag = f"sandpit-pytest/busybox:{run}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            (root / d).mkdir(parents=True)
        os.chmod(root, 0o755)
        os.chmod(root / "tmp", 0o1777)
        shutil.copy2(os.path.realpath(busybox), root / "bin" / "busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for a in applets:
            if a != "busybox" and "/" not in a:
                os.symlink("busybox", root / "bin" / a)
        (root / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
        )
        (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(
            ["docker", "import",
             "--change", 'CMD ["/bin/sleep","100000"]',
             "--change", "ENV PATH=/bin",
             "--change", f"LABEL {TEST_RUN_LABEL}={run}",
             "-", tag],
            stdin=tar.stdout, capture_output=True, text=True,
        )  # fmt: skip
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"docker import failed: {imp.stderr}")
    return tag


def remove_labelled(run: str) -> Dict[str, int]:
    """Removes every container, network, volume and image labelled with this run; returns counts."""
    label = f"label={TEST_RUN_LABEL}={run}"

    def ids(*args: str) -> List[str]:
        out = subprocess.run(["docker", *args, "--filter", label], capture_output=True, text=True)
        return out.stdout.split()

    counts = {}
    containers = ids("ps", "-aq")
    if containers:
        subprocess.run(["docker", "rm", "-f", "-v", *containers], capture_output=True)
    counts["containers"] = len(containers)
    networks = ids("network", "ls", "-q")
    if networks:
        subprocess.run(["docker", "network", "rm", *networks], capture_output=True)
    counts["networks"] = len(networks)
    volumes = ids("volume", "ls", "-q")
    if volumes:
        subprocess.run(["docker", "volume", "rm", "-f", *volumes], capture_output=True)
    counts["volumes"] = len(volumes)
    images = ids("images", "-q")
    if images:
        subprocess.run(["docker", "rmi", "-f", *sorted(set(images))], capture_output=True)
    counts["images"] = len(set(images))
    return counts


@dataclass
class Daemon:
    """A running ``sandpitd``."""

    run: str
    dir: Path
    config: Path
    image: str
    addr: str = ""
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "sandpitd.log"

    def log(self, tail: int = 0) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    def client(self, token: str, **kwargs: object) -> "object":
        import sandpit

        return sandpit.Client(self.addr, token, **kwargs)  # type: ignore[arg-type]

    def start(self, binary: Path, timeout: float = 30) -> None:
        addr_file = self.data_dir / "sandpitd.addr"
        if addr_file.exists():
            addr_file.unlink()
        env = dict(os.environ, RUST_LOG="info,sandpit=debug")
        for k in list(env):
            if k.startswith("SANDPIT__") or k in ("SANDPIT_ADDR", "SANDPIT_TOKEN", "SANDPIT_DATA_DIR"):
                del env[k]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "--config", str(self.config)],
                stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=self.dir,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                text = addr_file.read_text()
            except OSError:
                text = ""
            if text.endswith("\n"):
                self.addr = text.strip()
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandpitd exited with {self.proc.returncode} at start:\n{self.log(60)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sandpitd did not start in {timeout}s:\n{self.log(60)}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGKILL, as the Rust harness does: no chance to clean up (the labels do)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


def write_config(
    dir: Path, run: str, image: str, *, identities: bool = True, profiles: Optional[Dict[str, str]] = None,
    extra_config: str = "",
) -> Path:
    """The daemon's config (and its profiles directory) under ``dir``.

    ``extra_config`` is TOML appended to it (e.g. a ``[governance]`` policy
    and more ``[[identities]]``), as the Rust harness's ``Options::governance``.
    """
    prof_dir = dir / "profiles"
    prof_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (profiles if profiles is not None else _PROFILES).items():
        (prof_dir / f"{name}.toml").write_text(body.replace("{image}", image).lstrip())
    ids = ""
    if identities:
        for name, team, role, token in [
            ("alice", "team-a", "requester", TEAM_A),
            ("bob", "team-b", "requester", TEAM_B),
            ("olive", "platform", "operator", OPERATOR),
            ("ada", "alg", "auditor", AUDITOR),
            ("amir", "alg", "approver", APPROVER),
            ("anna", "team-a", "approver", APPROVER_A),
        ]:
            ids += f'\n[[identities]]\nname = "{name}"\nteam = "{team}"\nroles = ["{role}"]\ntoken_sha256 = "{sha256(token)}"\n'
    config = dir / "sandpit.toml"
    config.write_text(
        f"""
listen = "127.0.0.1:0"
data_dir = "{dir / 'data'}"
profiles_dir = "{prof_dir}"
max_classification = "OFFICIAL-SENSITIVE"

[labels]
"{TEST_RUN_LABEL}" = "{run}"

[images]
build = []

[network]
subnet_pool = "10.231.0.0/16"
egress_port = 0

[metrics]
listen = "127.0.0.1:0"

[dashboard]
listen = "127.0.0.1:0"

[limits]
calls_per_second = 1000
burst = 2000

[isolation.minimum]
"OFFICIAL-SENSITIVE" = "container"

[lifecycle]
orphan_grace = "30s"
reconcile_interval = "2s"
expiry_warning = "3s"
shutdown_grace = "3s"
min_ttl = "1s"
{ids}
{extra_config}
"""
    )
    return config


def start_daemon(binary: Path, run: str, image: str, *, identities: bool = True,
                 profiles: Optional[Dict[str, str]] = None, extra_config: str = "") -> Daemon:  # fmt: skip
    dir = Path(tempfile.mkdtemp(prefix=f"sandpit-pytest-{run}-"))
    config = write_config(dir, run, image, identities=identities, profiles=profiles, extra_config=extra_config)
    d = Daemon(run=run, dir=dir, config=config, image=image)
    try:
        d.start(binary)
    except BaseException:
        d.stop()
        raise
    return d


def client(daemon: Daemon, token: str) -> Iterator[sandpit.Client]:
    """A client of `daemon` as `token`'s identity, closed after use (for fixtures: `yield from`)."""
    import sandpit

    with sandpit.Client(daemon.addr, token) as c:
        yield c
