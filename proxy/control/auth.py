"""Who may use the control API: approvers, each a name with a bearer token.

A token comes from ``--control-token`` or from the token file (``<state_dir>/control.token``,
created on first run with a random token, mode 0600). The file holds one approver per
line, ``NAME TOKEN``, or a bare ``TOKEN`` (named ``default_name``); blank lines and lines
starting with ``#`` are ignored. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..randomid import random_id

log = logging.getLogger("fiveplane.control")

TOKEN_FILE = "control.token"
TOKEN_ENV = "FIVEPLANE_CONTROL_TOKEN"
DEFAULT_APPROVER = "operator"
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, slots=True)
class Approver:
    name: str
    token: str = ""

    def __repr__(self) -> str:               # never print a token
        return f"Approver({self.name!r})"


class ControlAuth:
    """The approvers; ``identify(token)`` names the one holding ``token``."""

    def __init__(self, approvers: Iterable[Approver] | Mapping[str, str]) -> None:
        if isinstance(approvers, Mapping):
            approvers = [Approver(name, token) for name, token in approvers.items()]
        self._approvers = tuple(approvers)
        if not self._approvers:
            raise ConfigError("the control API needs at least one approver token")
        for a in self._approvers:
            if not a.name.strip() or any(c.isspace() for c in a.name):
                raise ConfigError(f"approver name {a.name!r} must be one word")
            if len(a.token) < MIN_TOKEN_CHARS or any(c.isspace() for c in a.token):
                raise ConfigError(f"the control token of `{a.name}` must be at least "
                                  f"{MIN_TOKEN_CHARS} characters without blanks")

    @classmethod
    def single(cls, token: str, name: str = DEFAULT_APPROVER) -> ControlAuth:
        return cls([Approver(name, token)])

    @classmethod
    def from_file(cls, path: str | Path, default_name: str = DEFAULT_APPROVER) -> ControlAuth:
        return cls(read_token_file(path, default_name))

    @classmethod
    def from_options(cls, state_dir: str | Path, token: str | None = None,
                     name: str = DEFAULT_APPROVER) -> ControlAuth:
        """``--control-token`` when given, else the token file in ``state_dir`` (created
        with a fresh random token when missing)."""
        if token:
            return cls.single(token, name)
        path = Path(state_dir) / TOKEN_FILE
        ensure_token_file(path)
        return cls.from_file(path, name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self._approvers)

    def identify(self, token: str | None) -> str | None:
        """The approver's name, or ``None`` when no approver holds this token."""
        if not token:
            return None
        given = token.encode("utf-8", "surrogatepass")
        found = None
        for a in self._approvers:            # no early exit: the time does not tell which
            if hmac.compare_digest(given, a.token.encode("utf-8", "surrogatepass")):
                found = found or a.name
        return found


def new_token() -> str:
    return random_id(32)


def ensure_token_file(path: str | Path) -> bool:
    """Create the token file with a random token (mode 0600) unless it exists. True when
    it was created. Warns when an existing file is readable by others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("control token file %s is readable by others (mode %o): "
                        "chmod 600 it", path, mode & 0o777)
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{DEFAULT_APPROVER} {new_token()}\n")
    log.info("control token written to %s", path)
    return True


def read_token_file(path: str | Path,
                    default_name: str = DEFAULT_APPROVER) -> list[Approver]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read control token file {path}: {e}") from e
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 1:
            out.append(Approver(default_name, parts[0]))
        elif len(parts) == 2:
            out.append(Approver(parts[0], parts[1]))
        else:
            raise ConfigError(f"{path}: expected `NAME TOKEN` or `TOKEN` per line")
    if not out:
        raise ConfigError(f"control token file {path} holds no token")
    return out


def first_token(path: str | Path) -> str | None:
    """The first token of a token file (what the CLI uses), ``None`` if it cannot be read."""
    try:
        return read_token_file(path)[0].token
    except ConfigError:
        return None
