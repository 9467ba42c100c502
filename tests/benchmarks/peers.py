"""Separate virtual environments for the peer products (never the project's venv).

``agent-governance-toolkit[core]`` and ``mcp-contextforge-gateway`` bring dozens of
dependencies (FastAPI, SQLAlchemy, aiohttp, ... with versions of their own), so each gets
its own venv under ``$FIVEPLANE_PEERS_DIR`` (default ``/tmp/fiveplane-peers``). The
benchmarks only *run* their interpreters; ``run.py --setup-peers`` creates missing venvs
with ``python -m venv`` and ``pip install`` from the package index.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PEERS_DIR = Path(os.environ.get("FIVEPLANE_PEERS_DIR", "/tmp/fiveplane-peers"))
REQUIREMENTS = {
    "agt": ["agent-governance-toolkit[core]"],
    "contextforge": ["mcp-contextforge-gateway"],
}
INSTALL_TIMEOUT_S = 900


def venv_dir(name: str) -> Path:
    return PEERS_DIR / name


def python(name: str) -> Path | None:
    """The peer venv's interpreter, if the venv exists and its packages are installed."""
    exe = venv_dir(name) / "bin" / "python"
    marker = venv_dir(name) / ".installed"
    return exe if exe.exists() and marker.exists() else None


def missing_reason(name: str) -> str:
    return (f"peer venv `{venv_dir(name)}` not installed (run `tests/benchmarks/run.py "
            f"--setup-peers` once: pip install {' '.join(REQUIREMENTS[name])} into it)")


def setup(name: str, log: Callable[[str], None] = print) -> tuple[Path | None, str]:
    """Create the venv and install the peer; (python, "") or (None, what failed)."""
    if python(name) is not None:
        return python(name), ""
    d = venv_dir(name)
    d.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(d)],
        [str(d / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(d / "bin" / "python"), "-m", "pip", "install", "--quiet", *REQUIREMENTS[name]],
    ]
    for argv in steps:
        log(f"  peers: {' '.join(argv[-3:])}")
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=env,
                               timeout=INSTALL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(argv)}` timed out after {INSTALL_TIMEOUT_S} s"
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-8:]
            return None, f"`{' '.join(argv)}` failed (exit {r.returncode}):\n" + "\n".join(tail)
    (d / ".installed").write_text(" ".join(REQUIREMENTS[name]) + "\n")
    return python(name), ""


def versions(name: str, packages: list[str]) -> dict[str, str]:
    exe = python(name)
    if exe is None:
        return {}
    code = ("import json, importlib.metadata as m\nout = {}\n"
            f"for p in {packages!r}:\n"
            "    try: out[p] = m.version(p)\n"
            "    except Exception: out[p] = '?'\n"
            "print(json.dumps(out))")
    r = subprocess.run([str(exe), "-c", code], capture_output=True, text=True, timeout=60,
                       check=False)
    import json
    try:
        return dict(json.loads(r.stdout))
    except ValueError:
        return {}
