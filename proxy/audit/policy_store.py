"""Content-addressed store of every policy version the proxy enforced.

Why: a record names its policy by version (``sha256:<hex>`` of the YAML text, the same
value ``CompiledPolicy.version`` carries), so re-adjudicating a record months later needs
that exact text. Entries are immutable files ``<hex>.yaml`` written atomically (temporary
file, fsync, rename, fsync of the directory); ``get`` re-hashes what it reads, so an edited
entry is reported instead of silently deciding under a different policy.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import AuditError
from ..policy import policy_version

PREFIX = "sha256:"


class PolicyStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, version: str) -> Path:
        if not version.startswith(PREFIX):
            raise AuditError(f"not a policy version: {version!r}")
        digest = version[len(PREFIX):]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise AuditError(f"not a policy version: {version!r}")
        return self.directory / f"{digest}.yaml"

    def put(self, text: str) -> str:
        """Store ``text`` (idempotent) and return its version."""
        version = policy_version(text)
        path = self._path(version)
        data = text.encode("utf-8")
        try:
            if path.is_file() and path.read_bytes() == data:
                return version
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)  # also repairs an entry whose content was altered
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise AuditError(f"cannot store policy {version} in {self.directory}: {e}") from e
        return version

    def get(self, version: str) -> str:
        """The text of ``version``; ``AuditError`` if missing or not matching its version."""
        path = self._path(version)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise AuditError(f"policy version {version} is not in the store "
                             f"{self.directory}") from None
        except OSError as e:
            raise AuditError(f"cannot read policy {version}: {e}") from e
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AuditError(f"the stored text of policy {version} was altered: it is not "
                             "UTF-8") from None
        actual = policy_version(text)
        if actual != version:
            raise AuditError(f"the stored text of policy {version} was altered: it hashes to "
                             f"{actual}")
        return text

    def __contains__(self, version: object) -> bool:
        try:
            return isinstance(version, str) and self._path(version).is_file()
        except AuditError:
            return False

    def versions(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(PREFIX + p.stem for p in self.directory.glob("*.yaml"))
