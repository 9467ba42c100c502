"""BENCHMARK ONLY: ``fiveplane run`` with its evidence sink swapped, to measure what the
audit costs per proxied request against the same proxy without it.

    python tests/benchmarks/audit_variant.py MODE [fiveplane run arguments ...]

MODE: ``durable`` (the product, unchanged), ``nofsync`` (the same log, written but never
fsynced: what durability costs) or ``off`` (decisions are not recorded at all: the
baseline). Lives with the benchmarks, which are not part of the installed package, so no
deployment can turn the audit off; it says so loudly on stderr when it does.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from common import ensure_paths

ensure_paths()

import addons.fiveplane_gate as gate  # noqa: E402
from proxy.audit import AuditLog  # noqa: E402
from proxy.audit.writer import Commit  # noqa: E402
from proxy.cli import main  # noqa: E402

MODES = ("durable", "nofsync", "off")


class NullSink:
    """Evidence that records nothing (the audit-off baseline). ``path`` and ``on_batch``
    are what the addon reads of an ``AuditLog`` (evidence lookup, audit metrics)."""

    path = None
    on_batch = None

    def __init__(self, *_args: Any, **_kw: Any) -> None:
        pass

    def record(self, *_args: Any, extra: Mapping[str, Any] | None = None,
               **_kw: Any) -> Commit:
        return Commit.durable()

    def close(self) -> None:
        pass


def no_fsync(*args: Any, **kw: Any) -> AuditLog:
    return AuditLog(*args, **kw, fsync=False)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode not in MODES:
        sys.exit(f"usage: audit_variant.py {'|'.join(MODES)} [fiveplane run arguments]")
    if mode != "durable":
        gate.AuditLog = NullSink if mode == "off" else no_fsync  # type: ignore[misc,assignment]
        print(f"BENCHMARK ONLY: the evidence sink is {mode!r}: decisions are NOT durably "
              "recorded by this process", file=sys.stderr, flush=True)
    sys.exit(main(["run", *sys.argv[2:]]))
