"""fiveplane benchmarks: adjudication latency and proxy overhead.

    .venv/bin/python tests/benchmarks/run.py [--quick] [--only adjudication|proxy]
                                             [--markdown FILE] [--[no-]profile]

Prints the machine, the command line and every table (markdown) on stdout, progress on
stderr; ``--markdown FILE`` writes the same report to FILE. Targets are printed next to the
figures; a missed adjudication target adds a cProfile breakdown, a missed proxy target a
cProfile breakdown of the fiveplane process (``--profile`` forces it, ``--no-profile``
skips it). The exit status is 0 even when a target is missed (1 on errors, 130 on Ctrl-C).

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
from pathlib import Path

from common import Section, ensure_paths, md_table

ensure_paths()


def machine() -> str:
    import mitmproxy.version

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [
        ["cores (os.cpu_count)", str(os.cpu_count())],
        ["Python", f"{platform.python_version()} ({platform.python_implementation()}, "
                   f"{sys.executable})"],
        ["mitmproxy", mitmproxy.version.VERSION],
        ["platform", platform.platform()],
        ["load average at start (1/5/15 min)", load],
        ["date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")],
    ]
    return md_table(["machine", ""], rows, align=["l", "l"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="20,000 decisions per policy size, 300 requests per proxy series")
    p.add_argument("--only", choices=["adjudication", "proxy"], default=None)
    p.add_argument("--markdown", metavar="FILE", default=None,
                   help="also write the report as markdown to FILE")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="cProfile the fiveplane process after the proxy run "
                        "(default: only when the proxy target is missed)")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    command = shlex.join([sys.executable, *sys.argv])
    header = "\n\n".join([
        "# fiveplane benchmarks" + (" (quick)" if args.quick else ""),
        machine(),
        f"command: `{command}`",
    ]) + "\n"
    print(header, flush=True)
    sections: list[Section] = []
    started = time.monotonic()
    try:
        if args.only in (None, "adjudication"):
            import adjudication

            log("adjudication benchmark ...")
            sections.append(adjudication.run(args.quick, log=log))
            print(sections[-1].markdown(), flush=True)
        if args.only in (None, "proxy"):
            import proxy_overhead

            log("proxy overhead benchmark ...")
            sections.append(proxy_overhead.run(args.quick, log=log, profile=args.profile))
            print(sections[-1].markdown(), flush=True)
    except KeyboardInterrupt:
        log("interrupted; child processes were stopped")
        return 130

    missed = [m for s in sections for m in s.missed]
    footer = "## Targets\n\n" + ("\n".join(f"- MISSED: {m}" for m in missed) if missed
                                 else "- all targets met") + \
        f"\n\n(total wall time {time.monotonic() - started:,.0f} s)\n"
    print(footer, flush=True)
    if args.markdown:
        out = Path(args.markdown)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join([header, *(s.markdown() for s in sections), footer]))
        log(f"markdown written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
