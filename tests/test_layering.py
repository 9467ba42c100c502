"""The core is importable without mitmproxy, and exports a small public API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import proxy

ROOT = Path(__file__).resolve().parents[1]


def test_core_never_imports_mitmproxy_at_module_level() -> None:
    offenders = []
    for path in (ROOT / "proxy").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: the CLI imports mitmproxy lazily in `run`
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("mitmproxy", "addons") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_core_imports_in_a_process_without_mitmproxy() -> None:
    code = (
        "import sys; sys.modules['mitmproxy'] = None\n"
        "import proxy, proxy.cli, proxy.gateway, proxy.translate, proxy.mcp_response\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "ok"


def test_public_api_is_exported() -> None:
    public = sorted(
        (n for n in vars(proxy) if not n.startswith("_") or n == "__version__"),
        key=str.casefold,
    )
    exported = {n for n in public if not isinstance(getattr(proxy, n), type(proxy))}
    assert set(proxy.__all__) == exported
