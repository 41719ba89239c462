"""Where the daemon is and who we are, found as the ``sandpit`` CLI finds them.

In order, as ``crates/sandpit-cli/src/lib.rs`` (``connect``) does:

* address: the ``addr`` argument, else ``SANDPIT_ADDR``, else the address a
  local daemon wrote to ``<data dir>/sandpitd.addr``, else
  ``http://127.0.0.1:50051``;
* token: the ``token`` argument, else ``SANDPIT_TOKEN``, else, unless a client
  certificate is given (it is then the identity), a local daemon's
  ``<data dir>/local-token``;
* data dir: the ``data_dir`` argument, else ``SANDPIT_DATA_DIR``, else the
  daemon's default: ``$XDG_DATA_HOME/sandpit``, else
  ``~/.local/share/sandpit``, else ``./sandpit-data``;
* TLS (``https://`` addresses only): a CA certificate (``ca_cert`` or
  ``SANDPIT_CA_CERT``) is required; a client certificate and key
  (``cert``/``key`` or ``SANDPIT_CERT``/``SANDPIT_KEY``) are both given or
  neither.

Empty environment variables count as unset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

from .errors import ConfigurationError

#: File in the data directory holding the address the daemon listens on.
ADDR_FILE = "sandpitd.addr"
#: File in the data directory holding the generated local token (mode 0600).
LOCAL_TOKEN_FILE = "local-token"
#: The address used when nothing else says one.
DEFAULT_ADDR = "http://127.0.0.1:50051"

PathOrPem = Union[str, "os.PathLike[str]", bytes]


def default_data_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """``$XDG_DATA_HOME/sandpit``, else ``~/.local/share/sandpit``, else ``./sandpit-data``."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "sandpit"
    home = env.get("HOME")
    if home:
        return Path(home) / ".local" / "share" / "sandpit"
    return Path("./sandpit-data")


def _read_trimmed(path: Path) -> Optional[str]:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def _pem(value: PathOrPem, what: str) -> bytes:
    """PEM bytes given as such, or read from a path."""
    if isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as e:
        raise ConfigurationError(f"{what} {value}: {e.strerror or e}") from None


@dataclass(frozen=True)
class Settings:
    """How to reach the daemon: what :func:`discover` found."""

    addr: str
    token: Optional[str] = field(default=None, repr=False)
    data_dir: Optional[Path] = None
    ca_cert: Optional[bytes] = field(default=None, repr=False)
    cert: Optional[bytes] = field(default=None, repr=False)
    key: Optional[bytes] = field(default=None, repr=False)

    @property
    def secure(self) -> bool:
        return self.addr.startswith("https://")

    @property
    def target(self) -> str:
        """The gRPC target: the address without its scheme and trailing slash."""
        addr = self.addr
        for scheme in ("http://", "https://"):
            if addr.startswith(scheme):
                addr = addr[len(scheme) :]
        return addr.rstrip("/")


def discover(
    addr: Optional[str] = None,
    token: Optional[str] = None,
    *,
    data_dir: Union[str, "os.PathLike[str]", None] = None,
    ca_cert: Optional[PathOrPem] = None,
    cert: Optional[PathOrPem] = None,
    key: Optional[PathOrPem] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Settings:
    """Finds the daemon's address and the credentials to use, as the CLI does (see the module doc)."""
    env = os.environ if environ is None else environ

    def from_env(name: str) -> Optional[str]:
        v = env.get(name)
        return v if v else None

    dd = Path(data_dir) if data_dir is not None else None
    if dd is None:
        env_dir = from_env("SANDPIT_DATA_DIR")
        dd = Path(env_dir) if env_dir else default_data_dir(env)
    address = addr or from_env("SANDPIT_ADDR") or _read_trimmed(dd / ADDR_FILE) or DEFAULT_ADDR

    ca = ca_cert if ca_cert is not None else from_env("SANDPIT_CA_CERT")
    cert_src = cert if cert is not None else from_env("SANDPIT_CERT")
    key_src = key if key is not None else from_env("SANDPIT_KEY")
    if cert_src is not None and key_src is None:
        raise ConfigurationError("cert needs key (or SANDPIT_KEY), its private key")
    if key_src is not None and cert_src is None:
        raise ConfigurationError("key needs cert (or SANDPIT_CERT), its certificate")
    cert_pem = _pem(cert_src, "cert") if cert_src is not None else None
    key_pem = _pem(key_src, "key") if key_src is not None else None

    # With a certificate, it is the identity: the local token (every role)
    # would otherwise be sent and win, as the daemon checks tokens first.
    tok = token or from_env("SANDPIT_TOKEN")
    if tok is None and cert_pem is None:
        tok = _read_trimmed(dd / LOCAL_TOKEN_FILE)
    if tok is not None and not all(0x20 <= ord(c) < 0x7F for c in tok):
        raise ConfigurationError("the token contains characters not allowed in a header")

    ca_pem = None
    if address.startswith("https://"):
        if ca is None:
            raise ConfigurationError("an https:// address needs ca_cert (or SANDPIT_CA_CERT)")
        ca_pem = _pem(ca, "ca_cert")
    elif cert_pem is not None:
        raise ConfigurationError(f"cert needs an https:// daemon address; {address} is not")
    elif "://" in address and not address.startswith("http://"):
        raise ConfigurationError(f"address {address}: use http://HOST:PORT or https://HOST:PORT")
    return Settings(addr=address, token=tok, data_dir=dd, ca_cert=ca_pem, cert=cert_pem, key=key_pem)
