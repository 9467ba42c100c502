"""fiveplane benchmarks: adjudication latency, Cedar and AGT side by side, proxy overhead
(with IBM ContextForge), scaling curves, DLP detectors vs. detect-secrets, audit log.

    .venv/bin/python tests/benchmarks/run.py [--quick] [--only NAME ...]
        [--markdown FILE | --write-docs] [--setup-peers] [--no-contextforge]
        [--[no-]profile]

NAME: adjudication, cedar, agt, proxy, scaling, dlp, audit, audit-cost, held, observe,
workers (repeat ``--only`` to pick several).
Prints the machine, the command line and every table (markdown) on stdout, progress on
stderr; ``--markdown FILE`` writes the same report to FILE; ``--write-docs`` writes it to
``docs/benchmarks.md`` with the latency plot ``docs/benchmarks-latency.png`` (matplotlib).
Targets are printed next to the figures; missed targets add cProfile breakdowns. Peer
products run from their own venvs under ``/tmp/fiveplane-peers`` (``--setup-peers``
creates them with pip). The exit status is 0 even when a target is missed (1 on errors,
130 on Ctrl-C).

Not collected by pytest (``norecursedirs`` in pyproject.toml).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import REPO_ROOT, Section, ensure_paths, md_table

ensure_paths()

import peers  # noqa: E402

BENCHMARKS = ("adjudication", "cedar", "agt", "proxy", "scaling", "dlp", "audit", "audit-cost",
              "held", "observe", "workers")
# Each of these starts several proxies and times hundreds of calls through each: a full run
# has them, `--quick` (the one-minute subset) only when named with `--only`.
NOT_QUICK = frozenset({"audit-cost", "held", "observe", "workers"})
DOCS_MD = REPO_ROOT / "docs" / "benchmarks.md"
DOCS_PNG = REPO_ROOT / "docs" / "benchmarks-latency.png"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def machine(extra: list[list[str]]) -> str:
    import mitmproxy.version

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rows = [
        ["cores (os.cpu_count)", str(os.cpu_count())],
        ["CPU", cpu or "?"],
        ["memory", mem or "?"],
        ["Python", f"{platform.python_version()} ({platform.python_implementation()}, "
                   f"{sys.executable})"],
        ["mitmproxy", mitmproxy.version.VERSION],
        ["cedarpy", _version("cedarpy")],
        ["matplotlib (plot only)", _version("matplotlib")],
        ["detect-secrets (DLP baseline)", _version("detect-secrets")],
        *extra,
        ["platform", platform.platform()],
        ["load average at start (1/5/15 min)", load],
        ["date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")],
    ]
    return md_table(["machine", ""], rows, align=["l", "l"])


def peer_rows() -> list[list[str]]:
    agt = peers.versions("agt", ["agent-governance-toolkit", "agent-governance-toolkit-core"])
    cf = peers.versions("contextforge", ["mcp-contextforge-gateway"])
    return [
        ["Agent Governance Toolkit (peer venv)",
         ", ".join(f"{k} {v}" for k, v in agt.items()) or "not installed"],
        ["IBM ContextForge (peer venv)",
         ", ".join(f"{k} {v}" for k, v in cf.items()) or "not installed"],
    ]


def plot(sections: list[Section], path: Path) -> str | None:
    """p50 decision latency vs. rules, log-log: fiveplane and its peers. Returns the
    markdown image line, or None when there is nothing to plot."""
    series: dict[str, dict[int, float]] = {}
    for s in sections:
        data = s.data.get("p50_us")
        if not data:
            continue
        if s.title.startswith("Adjudication"):
            series["fiveplane (adjudication section)"] = data
        elif "Cedar" in s.title:
            series["fiveplane (interleaved with cedarpy)"] = data["fiveplane"]
            series["cedarpy is_authorized"] = data["cedarpy"]
            series["cedarpy batch (mean per decision)"] = data["cedarpy batch"]
        elif "Agent Governance" in s.title:
            series["AGT AgentMesh PolicyEngine (subset)"] = data["agt"]
    if not series:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "fiveplane (adjudication section)": ("#1f77b4", "o", "-"),
        "fiveplane (interleaved with cedarpy)": ("#1f77b4", "s", "--"),
        "cedarpy is_authorized": ("#d62728", "^", "-"),
        "cedarpy batch (mean per decision)": ("#ff7f0e", "v", "--"),
        "AGT AgentMesh PolicyEngine (subset)": ("#2ca02c", "D", "-"),
    }
    import math

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ends: list[tuple[float, float, str, str]] = []     # (x, y, text, color) of last points
    for name, pts in series.items():
        xs = sorted(pts)
        color, marker, ls = styles.get(name, ("#7f7f7f", "x", ":"))
        ax.plot(xs, [pts[x] for x in xs], marker=marker, linestyle=ls, color=color,
                label=name)
        ends.append((xs[-1], pts[xs[-1]], f"{pts[xs[-1]]:,.1f} µs", color))
    # end labels, nudged apart vertically (log scale) so they never overlap
    ends.sort(key=lambda e: e[1])
    placed: list[float] = []
    for x, y, text, color in ends:
        ly = math.log10(max(y, 1e-3))
        if placed and ly - placed[-1] < 0.13:
            ly = placed[-1] + 0.13
        placed.append(ly)
        ax.annotate(text, (x, y), xytext=(x * 1.12, 10 ** ly), textcoords="data",
                    fontsize=8, va="center", color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rules in the policy (fiveplane's count; same policies translated)")
    ax.set_ylabel("p50 decision latency (µs, log scale)")
    ax.set_title("Decision latency vs. policy size (same machine, same run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_xlim(right=max(max(p) for p in series.values()) * 3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"![p50 decision latency vs. rules]({path.name})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="about 75 s: fewer decisions/requests, sizes up to 1,000 rules for "
                        "the peers, no ContextForge (it alone takes ~40 s to start)")
    p.add_argument("--only", action="append", choices=BENCHMARKS, default=None,
                   help="run only this benchmark (repeatable)")
    p.add_argument("--markdown", metavar="FILE", default=None,
                   help="also write the report as markdown to FILE")
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the report to {DOCS_MD.relative_to(REPO_ROOT)} and the plot to "
                        f"{DOCS_PNG.relative_to(REPO_ROOT)} (unless --markdown says otherwise)")
    p.add_argument("--setup-peers", action="store_true",
                   help="create the peer venvs (AGT, ContextForge) under "
                        f"{peers.PEERS_DIR} with pip when missing")
    p.add_argument("--contextforge", action=argparse.BooleanOptionalAction, default=None,
                   help="measure IBM ContextForge in the proxy run (default: on, off in --quick)")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="cProfile the fiveplane process after the proxy run "
                        "(default: only when the proxy target is missed; never in --quick)")
    args = p.parse_args(argv)
    only = set(args.only or (set(BENCHMARKS) - NOT_QUICK if args.quick else BENCHMARKS))
    markdown = args.markdown or (str(DOCS_MD) if args.write_docs else None)
    contextforge = (not args.quick) if args.contextforge is None else args.contextforge
    profile = False if args.quick and args.profile is None else args.profile

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    setup_notes = []
    if args.setup_peers:
        for name in ("agt", "contextforge"):
            exe, err = peers.setup(name, log)
            if exe is None:
                setup_notes.append(f"- peer `{name}` could not be installed: {err}")
                log(f"peer {name} could not be installed: {err}")

    command = shlex.join([sys.executable, *sys.argv] if argv is None else
                         [sys.executable, "tests/benchmarks/run.py", *argv])
    header = "\n\n".join([
        "# fiveplane benchmarks" + (" (quick)" if args.quick else ""),
        machine(peer_rows()),
        f"command: `{command}`",
        "Every comparison below is measured in this one run on this machine, against its "
        "baseline in the same run (ratios); warm-up and repetitions are stated under each "
        "table. The machine may be shared: compare ratios within this report, not absolute "
        "numbers across reports.",
        *setup_notes,
    ]) + "\n"
    print(header, flush=True)
    sections: list[Section] = []
    started = time.monotonic()
    timings: list[list[str]] = []

    def step(name: str, fn: Callable[[], Section]) -> None:
        if name not in only:
            return
        log(f"{name} benchmark ...")
        t0 = time.monotonic()
        try:
            sections.append(fn())
        except KeyboardInterrupt:
            raise
        except Exception as e:   # one benchmark's failure must not lose the others
            import traceback
            tb = traceback.format_exc().strip().splitlines()
            log("\n".join(tb))
            failed = Section(f"{name}: FAILED")
            failed.add(f"`{e!r}`\n\n```\n" + "\n".join(tb[-12:]) + "\n```")
            failed.missed.append(f"{name} benchmark failed: {e!r}"[:300])
            sections.append(failed)
        timings.append([name, f"{time.monotonic() - t0:,.0f} s"])
        print(sections[-1].markdown(), flush=True)

    try:
        import adjudication
        step("adjudication", lambda: adjudication.run(args.quick, log=log))

        def cedar() -> Section:
            import cedar_bench
            return cedar_bench.run(args.quick, log=log)
        step("cedar", cedar)

        def agt() -> Section:
            import agt_bench
            return agt_bench.run(args.quick, log=log)
        step("agt", agt)

        def proxy() -> Section:
            import proxy_overhead
            return proxy_overhead.run(args.quick, log=log, profile=profile,
                                      contextforge=contextforge)
        step("proxy", proxy)

        def scaling() -> Section:
            import scaling as sc
            rules = next((s.data["p50_us"] for s in sections
                          if s.title.startswith("Adjudication")), None)
            return sc.run(args.quick, log=log, rules_p50=rules)
        step("scaling", scaling)

        def dlp() -> Section:
            import dlp_bench
            return dlp_bench.run(args.quick, log=log, tiny=args.quick)  # type: ignore[no-any-return]
        step("dlp", dlp)

        def audit() -> Section:
            import audit_bench
            return audit_bench.run(args.quick, log=log)
        step("audit", audit)

        def audit_cost_() -> Section:
            import audit_cost
            return audit_cost.run(args.quick, log=log)
        step("audit-cost", audit_cost_)

        def held() -> Section:
            import held_calls
            return held_calls.run(args.quick, log=log)
        step("held", held)

        def observe() -> Section:
            import observe_bench
            return observe_bench.run(args.quick, log=log)
        step("observe", observe)

        def workers() -> Section:
            import workers_bench
            return workers_bench.run(args.quick, log=log)
        step("workers", workers)
    except KeyboardInterrupt:
        log("interrupted; child processes were stopped")
        return 130

    missed = [m for s in sections for m in s.missed]
    footer = "## Targets\n\n" + ("\n".join(f"- MISSED: {m}" for m in missed) if missed
                                 else "- all targets met") + \
        "\n\n" + md_table(["benchmark", "wall time"], timings, align=["l", "r"]) + \
        f"\n\n(total wall time {time.monotonic() - started:,.0f} s; load average at end " + \
        " / ".join(f"{x:.2f}" for x in os.getloadavg()) + ")\n"
    print(footer, flush=True)
    if markdown:
        out = Path(markdown)
        png = DOCS_PNG if args.write_docs and not args.markdown else out.with_suffix(".png")
        image: Any = None
        try:
            image = plot(sections, png)
        except ImportError as e:
            log(f"no plot: {e} (pip install matplotlib)")
        parts = [header]
        if image:
            parts.append("## Latency vs. rules\n\n" + image + "\n")
        parts += [s.markdown() for s in sections]
        parts.append(footer)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(parts))
        log(f"markdown written to {out}" + (f", plot to {png}" if image else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
