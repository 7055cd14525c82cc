"""``longvila leaderboards``: build (``make leaderboards``), validate, and check the page in a browser.

- ``build``: validate every result file, write README.md, index.html and assets/, then load the page in
  headless chromium and fail on any problem (``--check-browser auto``: only when chromium is installed,
  saying so when it is not; ``yes``: always; ``no``: never).
- ``validate``: only read and validate the result files (and the quoted anchors); print a summary.
- ``check``: the browser check alone on an existing page.
Exit codes: 0 success, 1 malformed results / failed check, 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from longvila.leaderboards.build import DEFAULT_OUT, build
from longvila.leaderboards.results import ResultError, default_results_dir, load_results
from longvila.leaderboards.tables import DEFAULT_QUOTED, load_quoted


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longvila leaderboards", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in [("build", "validate results and generate README.md, index.html, assets/"),
                        ("validate", "validate the result files and quoted anchors"),
                        ("check", "check the generated page in headless chromium")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("--results", type=Path, default=None,
                       help=f"result files folder (default {default_results_dir()})")
        s.add_argument("--quoted", type=Path, default=DEFAULT_QUOTED, help="quoted anchors file")
        if name in ("build", "check"):
            s.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for README.md/index.html/assets")
        if name == "build":
            s.add_argument("--check-browser", choices=["auto", "yes", "no"], default="auto",
                           help="then check the page in headless chromium (auto: when chromium is installed)")
    return p


def _browser_check(page: Path, results, quoted) -> int:
    from longvila.leaderboards.browser import BrowserError, check_page

    try:
        problems = check_page(page, results, quoted)
    except (BrowserError, FileNotFoundError) as e:
        print(f"leaderboards: browser check could not run: {e}", file=sys.stderr)
        return 1
    for line in problems:
        print(f"leaderboards: {page}: {line}", file=sys.stderr)
    if not problems:
        print(f"browser check passed: {page} (no console errors, all images loaded, all numbers shown)")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "validate":
            results = load_results(args.results)
            quoted = load_quoted(args.quoted)
            counts = Counter(r.benchmark for r in results)
            summary = ", ".join(f"{b}: {n}" for b, n in sorted(counts.items())) or "none"
            print(f"{len(results)} valid result file(s) ({summary}); {len(quoted)} quoted anchor(s)")
            return 0
        if args.cmd == "check":
            return _browser_check(args.out / "index.html", load_results(args.results), load_quoted(args.quoted))
        report = build(args.results, args.out, args.quoted)
    except (ResultError, ValueError) as e:
        print(f"leaderboards: {e}", file=sys.stderr)
        return 1
    print(f"{len(report.results)} result file(s) -> {report.readme} and {report.html} "
          f"({len(report.assets)} image(s) in {report.html.parent / 'assets'})")
    for a in report.shrunk:
        print(f"  scaled down large image {a}")
    for a in report.removed:
        print(f"  removed stale image {a}")
    for a in report.orphans:
        print(f"  warning: no result references {a} in the results folder", file=sys.stderr)
    if args.check_browser == "auto":
        from longvila.leaderboards.browser import find_chromium

        if find_chromium() is None:
            print("browser check skipped: chromium not installed (leaderboards/setup_browser.sh installs it)")
            return 0
    if args.check_browser != "no":
        return _browser_check(report.html, report.results, load_quoted(args.quoted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
