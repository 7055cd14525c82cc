"""Check the generated page in a real headless chromium through the Chrome DevTools protocol (CDP).

:func:`inspect_page` loads a file in chromium and returns what a reader would see: console messages and
errors (JavaScript exceptions, failed resource loads), every image with its natural size, and every table
cell with its ``data-metric`` / ``data-value`` attributes. :func:`check_page` compares that with the result
files and returns a list of problems (empty = the page is good).

Design choices: CDP over a websocket (``websocket-client``) rather than ``--dump-dom``, because only the
protocol reports console errors and image load state reliably. The browser gets a fresh profile in a
temporary folder, no network services, a random debugging port read from ``DevToolsActivePort``, and a
deadline on every step; it is always terminated (its process group killed) when the check ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvila.leaderboards.results import Result
from longvila.leaderboards.tables import fmt_metric

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-dev-shm-usage", "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]
_PAGE_STATE_JS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                 w: i.naturalWidth, h: i.naturalHeight})),
  cells: Array.from(document.querySelectorAll('table')).flatMap(t => Array.from(t.querySelectorAll('tbody tr'))
    .flatMap(tr => Array.from(tr.cells).map(td => ({table: t.id, kind: t.dataset.kind || '',
      result: tr.dataset.result || null, metric: td.dataset.metric || null,
      value: td.dataset.value === undefined ? null : td.dataset.value, text: td.textContent.trim()})))),
  title: document.title,
})"""


class BrowserError(RuntimeError):
    """Chromium is missing, did not start, or did not answer in time."""


@dataclass
class PageState:
    console: list[str] = field(default_factory=list)  # "level: text" of every error/warning seen
    images: list[dict[str, Any]] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""


def find_chromium() -> str | None:
    """Path of a chromium binary (``$CHROMIUM`` overrides), or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


class _CDP:
    """A minimal CDP session on one page target: send commands, collect events."""

    def __init__(self, ws_url: str, timeout: float):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True,
                                              http_no_proxy=["127.0.0.1", "localhost"])
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, deadline: float, **params) -> dict[str, Any]:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = self._recv(deadline, method)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise BrowserError(f"CDP {method} failed: {msg['error']}")
                return msg.get("result", {})

    def wait_event(self, name: str, deadline: float) -> None:
        while not any(e.get("method") == name for e in self.events):
            self._recv(deadline, name)

    def _recv(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrowserError(f"chromium did not answer {waiting_for} in time")
        self.ws.settimeout(left)
        try:
            msg = json.loads(self.ws.recv())
        except Exception as e:  # timeout or closed socket
            raise BrowserError(f"chromium did not answer {waiting_for}: {type(e).__name__}: {e}") from None
        if "method" in msg:
            self.events.append(msg)
        return msg

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


def _wait_port(profile: Path, proc: subprocess.Popen, deadline: float) -> int:
    f = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrowserError(f"chromium exited with code {proc.returncode} before opening its debugging port")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(f.read_text().splitlines()[0])
        time.sleep(0.1)
    raise BrowserError("chromium did not open its debugging port in time")


def _page_ws_url(port: int, deadline: float) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.loads(r.read())
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise BrowserError("chromium did not list a page target in time")


def _console_lines(events: list[dict[str, Any]]) -> list[str]:
    lines = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            lines.append(f"console.{p['type']}: {args}")
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            lines.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            entry = p["entry"]
            lines.append(f"{entry['level']}: {entry.get('text')} {entry.get('url', '')}".strip())
    return lines


def inspect_page(html: str | os.PathLike, timeout: float = 60.0, settle: float = 0.5) -> PageState:
    """Load ``html`` (a local file) in headless chromium and return its :class:`PageState`."""
    html = Path(html).resolve()
    if not html.is_file():
        raise FileNotFoundError(f"{html}: no such page")
    exe = find_chromium()
    if exe is None:
        raise BrowserError("chromium not found (install it with leaderboards/setup_browser.sh)")
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="lv-chromium-") as profile:
        proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        cdp = None
        try:
            port = _wait_port(Path(profile), proc, deadline)
            cdp = _CDP(_page_ws_url(port, deadline), timeout)
            for domain in ("Runtime", "Log", "Page"):
                cdp.send(f"{domain}.enable", deadline)
            cdp.send("Page.navigate", deadline, url=html.as_uri())
            cdp.wait_event("Page.loadEventFired", deadline)
            end = min(deadline, time.monotonic() + settle)  # late console messages
            with contextlib.suppress(BrowserError):
                while True:
                    cdp._recv(end, "late events")
            res = cdp.send("Runtime.evaluate", deadline, expression=_PAGE_STATE_JS, returnByValue=True)
            state = json.loads(res["result"]["value"])
            return PageState(_console_lines(cdp.events), state["images"], state["cells"], state["title"])
        finally:
            if cdp is not None:
                with contextlib.suppress(BrowserError):
                    cdp.send("Browser.close", time.monotonic() + 5)
                cdp.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            # NOTE: the launcher may exit before its children; the session holds all of them.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def check_page(html: str | os.PathLike, results: list[Result], quoted: list[dict[str, Any]] | None = None,
               timeout: float = 60.0) -> list[str]:
    """Problems with the page in a real browser: console errors, broken images, numbers that differ from
    the result files (every metric of every result must appear with its exact value and its formatted text),
    quoted figures missing from the quoted tables or measured cells inside them. Empty = good."""
    return find_problems(inspect_page(html, timeout=timeout), results, quoted)


def find_problems(state: PageState, results: list[Result], quoted: list[dict[str, Any]] | None = None) -> list[str]:
    """The checks of :func:`check_page` on an already inspected page."""
    problems = [f"console {line}" for line in state.console]
    for img in state.images:
        if not img["complete"] or img["w"] <= 0 or img["h"] <= 0:
            problems.append(f"image {img['src']} did not load (natural size {img['w']}x{img['h']})")
    expected_images = {f"assets/{p.name}" for r in results for p in r.plots.values()}
    missing = expected_images - {img["src"] for img in state.images}
    problems += [f"image {src} is not on the page" for src in sorted(missing)]
    shown: dict[tuple[str, str], list[float]] = {}
    for c in state.cells:
        if c["kind"] == "quoted" and (c["result"] is not None or c["metric"] is not None):
            problems.append(f"quoted table {c['table']} holds a measured cell ({c['result']}, {c['metric']})")
        if c["metric"] is not None and c["result"] is not None:
            value = float(c["value"])
            shown.setdefault((c["result"], c["metric"]), []).append(value)
            if c["text"] != fmt_metric(c["metric"], value):
                problems.append(f"{c['result']}: metric {c['metric']} reads {c['text']!r} for value {value}")
    for r in results:
        for k, v in r.metrics.items():
            vals = shown.get((r.name, k))
            if not vals:
                problems.append(f"{r.name}: metric {k} is not on the page")
            elif any(x != v for x in vals):
                problems.append(f"{r.name}: metric {k} shows {vals}, the result file says {v}")
    quoted_cells = {(c["table"].removesuffix("-quoted"), c["text"]) for c in state.cells if c["kind"] == "quoted"}
    for q in quoted or []:
        if (q["benchmark"], q["figure"]) not in quoted_cells:
            problems.append(f"quoted figure {q['figure']!r} ({q['benchmark']}) is not in a quoted table")
    return problems
