"""The daemon's address and token are found as the CLI finds them: explicit
arguments, then SANDPIT_ADDR / SANDPIT_TOKEN, then the files a local daemon
writes to its data directory (SANDPIT_DATA_DIR, else the daemon's default)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator

import pytest

import harness
import sandpit
from sandpit import discover

ENV_VARS = ("SANDPIT_ADDR", "SANDPIT_TOKEN", "SANDPIT_DATA_DIR", "SANDPIT_CA_CERT", "SANDPIT_CERT", "SANDPIT_KEY",
            "XDG_DATA_HOME")  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)


def _data_dir(root: Path, addr: str = "http://127.0.0.1:4242", token: str = "tok") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sandpitd.addr").write_text(addr + "\n")
    (root / "local-token").write_text(token + "\n")
    return root


def test_file_names_are_the_daemons() -> None:
    # crates/sandpit-core/src/data_dir.rs
    assert sandpit.ADDR_FILE == "sandpitd.addr"
    assert sandpit.LOCAL_TOKEN_FILE == "local-token"
    assert sandpit.DEFAULT_ADDR == "http://127.0.0.1:50051"


def test_the_default_data_dir_is_the_daemons() -> None:
    assert sandpit.default_data_dir({"XDG_DATA_HOME": "/x", "HOME": "/h"}) == Path("/x/sandpit")
    assert sandpit.default_data_dir({"XDG_DATA_HOME": "", "HOME": "/h"}) == Path("/h/.local/share/sandpit")
    assert sandpit.default_data_dir({}) == Path("./sandpit-data")


def test_a_local_daemons_files_are_read_from_the_default_data_dir(tmp_path: Path) -> None:
    _data_dir(tmp_path / "xdg" / "sandpit", "http://127.0.0.1:1111", "from-xdg")
    s = discover(environ={"XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")})
    assert (s.addr, s.token, s.target) == ("http://127.0.0.1:1111", "from-xdg", "127.0.0.1:1111")
    _data_dir(tmp_path / "home" / ".local" / "share" / "sandpit", "http://127.0.0.1:2222", "from-home")
    s = discover(environ={"HOME": str(tmp_path / "home")})
    assert (s.addr, s.token) == ("http://127.0.0.1:2222", "from-home")


def test_nothing_found_means_the_default_address_and_no_token(tmp_path: Path) -> None:
    s = discover(environ={"HOME": str(tmp_path)})
    assert (s.addr, s.token) == (sandpit.DEFAULT_ADDR, None)


def test_env_wins_over_files_and_arguments_over_env(tmp_path: Path) -> None:
    dd = _data_dir(tmp_path / "dd", "http://127.0.0.1:3333", "file-token")
    env: Dict[str, str] = {"SANDPIT_DATA_DIR": str(dd), "HOME": str(tmp_path)}
    assert (discover(environ=env).addr, discover(environ=env).token) == ("http://127.0.0.1:3333", "file-token")
    env.update(SANDPIT_ADDR="http://127.0.0.1:4444", SANDPIT_TOKEN="env-token")
    s = discover(environ=env)
    assert (s.addr, s.token) == ("http://127.0.0.1:4444", "env-token")
    s = discover("http://127.0.0.1:5555", "arg-token", environ=env)
    assert (s.addr, s.token) == ("http://127.0.0.1:5555", "arg-token")
    env.update(SANDPIT_ADDR="", SANDPIT_TOKEN="")  # empty counts as unset
    assert discover(environ=env).token == "file-token"


def test_tls_settings_are_checked_as_the_cli_checks_them(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    env = {"HOME": str(tmp_path)}
    with pytest.raises(sandpit.ConfigurationError, match="needs ca_cert"):
        discover("https://127.0.0.1:1", "t", environ=env)
    with pytest.raises(sandpit.ConfigurationError, match="cert needs key"):
        discover("https://127.0.0.1:1", ca_cert=pem, cert=pem, environ=env)
    with pytest.raises(sandpit.ConfigurationError, match="key needs cert"):
        discover("https://127.0.0.1:1", ca_cert=pem, key=pem, environ=env)
    with pytest.raises(sandpit.ConfigurationError, match="needs an https:// daemon"):
        discover("http://127.0.0.1:1", cert=pem, key=pem, environ=env)
    with pytest.raises(sandpit.ConfigurationError, match="ca_cert"):
        discover("https://127.0.0.1:1", ca_cert=tmp_path / "missing.pem", environ=env)
    s = discover("https://127.0.0.1:1", environ={**env, "SANDPIT_CA_CERT": str(pem)})
    assert s.secure and s.ca_cert == pem.read_bytes()


def test_a_client_certificate_is_the_identity_so_the_local_token_is_not_sent(tmp_path: Path) -> None:
    dd = _data_dir(tmp_path / "dd", "https://127.0.0.1:1", "every-role")
    pem = tmp_path / "x.pem"
    pem.write_bytes(b"pem")
    env = {"SANDPIT_DATA_DIR": str(dd), "SANDPIT_CA_CERT": str(pem), "SANDPIT_CERT": str(pem), "SANDPIT_KEY": str(pem)}
    assert discover(environ=env).token is None
    assert discover(environ={**env, "SANDPIT_TOKEN": "explicit"}).token == "explicit"


# ---------------------------------------------------------------- a real local daemon


@pytest.fixture(scope="module")
def local_daemon(run_id: str, sandpitd_bin: Path) -> Iterator[harness.Daemon]:
    """A daemon with no identities: it writes a local token with every role."""
    d = harness.start_daemon(sandpitd_bin, run_id, "sandpit-pytest/none:never", identities=False)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)


def test_client_with_no_arguments_finds_a_local_daemon(
    local_daemon: harness.Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = local_daemon.data_dir / "local-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("SANDPIT_DATA_DIR", str(local_daemon.data_dir))
    with sandpit.Client() as c:
        assert c.addr == local_daemon.addr
        assert c.settings.token == token_file.read_text().strip()
        assert harness.WEB_PROFILE in [p.name for p in c.profiles()]
        e = c.register(title="Discovery", purpose="The local identity", classification="OFFICIAL")
        assert c.experiment(e.id).title == "Discovery"
    # The same files through XDG_DATA_HOME (the daemon's default data dir).
    xdg = local_daemon.dir / "xdg"
    (xdg / "sandpit").mkdir(parents=True, exist_ok=True)
    for f in ("sandpitd.addr", "local-token"):
        shutil.copy(local_daemon.data_dir / f, xdg / "sandpit" / f)
    monkeypatch.delenv("SANDPIT_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    with sandpit.Client() as c:
        assert c.addr == local_daemon.addr
        assert [x.id for x in c.experiments()] == [e.id]
    # A wrong token from the environment wins over the file, and is refused.
    monkeypatch.setenv("SANDPIT_TOKEN", "not-the-token")
    with sandpit.Client() as c, pytest.raises(sandpit.Unauthenticated) as err:
        c.experiments()
    assert err.value.code == "UNAUTHENTICATED"


# ---------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_daemon(run_id: str, sandpitd_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, object]]:
    """A daemon serving https, accepting client certificates of its client CA (carol: CN=carol, O=ONS)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    pki = tmp_path_factory.mktemp("pki")
    for ca in ("server-ca", "client-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                 "-subj", f"/CN=sandpit test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=pki)  # fmt: skip
    for name, ca, subj, ext in [
        ("server", "server-ca", "/CN=sandpitd/O=ONS", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("carol", "client-ca", "/CN=carol/O=ONS", "extendedKeyUsage=clientAuth"),
    ]:
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subj,
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=pki)  # fmt: skip
        (pki / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)  # fmt: skip
    dir = Path(tmp_path_factory.mktemp("tls-daemon"))
    config = harness.write_config(dir, run_id, "sandpit-pytest/none:never")
    config.write_text(
        config.read_text()
        + f'\n[tls]\ncert = "{pki / "server.crt"}"\nkey = "{pki / "server.key"}"\nclient_ca = "{pki / "client-ca.crt"}"\n'
        + '\n[[identities]]\nname = "carol"\nteam = "team-c"\nroles = ["requester"]\ncert_subject = "CN=carol, O=ONS"\n'
    )
    d = harness.Daemon(run=run_id, dir=dir, config=config, image="")
    try:
        d.start(sandpitd_bin)
        yield {"daemon": d, "pki": pki}
    finally:
        d.stop()


def test_https_with_a_ca_and_a_token(tls_daemon: Dict[str, object]) -> None:
    d, pki = tls_daemon["daemon"], tls_daemon["pki"]
    assert isinstance(d, harness.Daemon) and isinstance(pki, Path)
    assert d.addr.startswith("https://127.0.0.1:")
    with sandpit.Client(d.addr, harness.TEAM_A, ca_cert=pki / "server-ca.crt") as c:
        assert c.sandboxes() == []
        assert c.register(title="TLS", purpose="p", classification="OFFICIAL").owner == "alice"
    # Verified against the right CA only.
    with sandpit.Client(d.addr, harness.TEAM_A, ca_cert=pki / "client-ca.crt") as c:
        with pytest.raises(sandpit.Unavailable):
            c.sandboxes()


def test_mutual_tls_from_the_environment_makes_the_certificate_the_identity(
    tls_daemon: Dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, pki = tls_daemon["daemon"], tls_daemon["pki"]
    assert isinstance(d, harness.Daemon) and isinstance(pki, Path)
    monkeypatch.setenv("SANDPIT_ADDR", d.addr)
    monkeypatch.setenv("SANDPIT_CA_CERT", str(pki / "server-ca.crt"))
    monkeypatch.setenv("SANDPIT_CERT", str(pki / "carol.crt"))
    monkeypatch.setenv("SANDPIT_KEY", str(pki / "carol.key"))
    monkeypatch.setenv("SANDPIT_DATA_DIR", str(d.data_dir))
    with sandpit.Client() as c:
        assert c.settings.token is None
        e = c.register(title="mTLS", purpose="p", classification="OFFICIAL")
        assert (e.owner, e.team) == ("carol", "team-c")
