"""Open every page of a built book in headless Chromium and list what a reader would trip on.

    python -m cooplib.book.check _build/html [--screenshots DIR] [--width 1400]

Each page is loaded from file:// (no server, no network) through Chromium's DevTools
protocol, after its scripts (MathJax) ran. A page fails on: a Python traceback or a
stderr block, a literal `{name}` placeholder or unrendered `\\(` math in the text, a
figure wider than the text column (the browser would shrink its text), a table printed
as text instead of HTML, a table whose row labels were lost (blank first header), a numpy
scalar's repr (`np.int64(3)`) in the text, a request to anything but a local file (a CDN), a missing
image or asset, or a forbidden string (e.g. the build machine's absolute path).
"""
from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs in the page: every problem a reader would see, as a list of strings.
_PAGE_CHECKS = r"""
(() => {
  const problems = [];
  const article = document.querySelector('article') || document.body;
  const visible = (el) => !el.closest('details:not([open]), .toggle-hidden, .cell_input, script, style, pre, code');
  for (const el of article.querySelectorAll('.output.stderr, .stderr, .output.error, .output.traceback, .traceback')) {
    problems.push('stderr/traceback block: ' + el.innerText.trim().split('\n')[0].slice(0, 120));
  }
  if (article.innerText.includes('Traceback (most recent call last)')) problems.push('a Python traceback is shown');
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    const el = node.parentElement;
    if (!el || !visible(el)) continue;
    const text = node.textContent;
    const placeholder = text.match(/\{[A-Za-z_][A-Za-z0-9_.\[\]'"!:]*\}/);
    if (placeholder) problems.push('literal placeholder ' + placeholder[0] + ' in: ' + text.trim().slice(0, 100));
    if (/\\\(|\\\[/.test(text)) problems.push('unrendered math: ' + text.trim().slice(0, 100));
    const scalar = text.match(/\bnp\.(int|float|bool|str)_?\d*\(/);
    if (scalar) problems.push('numpy repr ' + scalar[0] + ' in: ' + text.trim().slice(0, 100));
  }
  for (const table of article.querySelectorAll('table')) {
    const header = table.querySelector('thead tr');
    const rows = table.querySelectorAll('tbody tr');
    if (header && rows.length >= 2 && header.cells.length >= 2 && !header.cells[0].innerText.trim()) {
      problems.push('table without row labels (blank first header): ' + Array.from(header.cells).slice(1, 3).map(c => c.innerText.trim()).join(', '));
    }
  }
  for (const img of article.querySelectorAll('img')) {
    if (!img.complete || img.naturalWidth === 0) { problems.push('missing image ' + img.getAttribute('src')); continue; }
    const column = img.closest('.cell_output, figure, p, div') || article;
    if (img.naturalWidth > column.clientWidth + 2) {
      problems.push(`figure ${img.naturalWidth} px wide in a ${column.clientWidth} px column: ${img.getAttribute('src')}`);
    }
  }
  for (const pre of article.querySelectorAll('.cell_output pre, .output pre')) {
    const lines = pre.innerText.split('\n').filter(l => l.trim());
    const tabular = lines.filter(l => l.trim().split(/\s{2,}/).length >= 3);
    if (lines.length >= 3 && tabular.length >= lines.length - 1) problems.push('table printed as text: ' + lines[0].trim().slice(0, 80));
  }
  return {problems, title: document.title, width: article.clientWidth};
})()
"""


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium driven over its DevTools websocket (one tab)."""

    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        import websocket  # websocket-client

        exe = find_browser()
        if exe is None:
            raise FileNotFoundError(f"no Chromium found (looked for {', '.join(BROWSERS)}); on Debian: apt install chromium")
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="cooplib-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with code {self.proc.returncode} before listening")
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = int(found.group(1)) if found else None
        if port is None:
            raise RuntimeError("Chromium did not open its DevTools port within 60 s")
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True, timeout=60)
        self._id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        self.ws.settimeout(timeout)
        while time.time() < deadline:
            if any(e.get("method") == event for e in self.events):
                return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"{event} not within {timeout} s")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str, settle: float = 1.0) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        for attempt in range(3):
            try:
                self._settle(settle)
                return
            except RuntimeError as exc:  # a redirect page (the book's index.html) moved on meanwhile
                if "navigated or closed" not in str(exc) or attempt == 2:
                    raise
                time.sleep(1.0)  # the page it moved to loads; then wait for it as for the first

    def _settle(self, settle: float) -> None:
        # MathJax typesets after the load event; wait until its queue is empty
        deadline = time.time() + 30
        while time.time() < deadline and not self.evaluate(
                "!(window.MathJax && MathJax.Hub) || (MathJax.Hub.queue.pending === 0 && !MathJax.Hub.queue.running)"):
            time.sleep(0.2)
        time.sleep(settle)
        self.call("Runtime.evaluate", expression="0")  # collect the events that arrived meanwhile

    def screenshot(self, path: Path) -> None:
        """The whole page as a PNG at the window's width (at most 12,000 px tall)."""
        height = min(int(self.evaluate("document.documentElement.scrollHeight")), 12000)
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(0.3)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _network_problems(events: list[dict]) -> list[str]:
    problems, urls = [], {}
    for e in events:
        params = e.get("params", {})
        if e.get("method") == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            urls[params.get("requestId")] = url
            if not url.startswith(("file:", "data:", "about:", "blob:")):
                problems.append(f"network request (not a local file): {url[:120]}")
        elif (e.get("method") == "Network.loadingFailed" and not params.get("canceled")
              and not urls.get(params.get("requestId"), "").startswith(("about:", "data:"))):
            problems.append(f"asset failed to load: {params.get('errorText')}: {urls.get(params.get('requestId'), '?')[:160]}")
    return problems


def pages(html_root: Path) -> list[Path]:
    """Every page of the book (not the search or index pages)."""
    skip = {"search.html", "genindex.html", "py-modindex.html"}
    return sorted(p for p in html_root.rglob("*.html") if p.name not in skip and "_static" not in p.parts
                  and "_sources" not in p.parts)


def check(html_root: str | Path, screenshots: str | Path | None = None, width: int = 1400,
          forbidden: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """{page: problems} for every page of the built book (empty lists when all is well)."""
    html_root = Path(html_root).resolve()
    found = pages(html_root)
    if not found:
        raise FileNotFoundError(f"no HTML pages under {html_root}: build the book first")
    report = {}
    with Chromium(width=width) as browser:
        for page in found:
            browser.open(page.as_uri())
            result = browser.evaluate(_PAGE_CHECKS)
            text = browser.evaluate("document.body.innerText")
            problems = result["problems"] + _network_problems(browser.events)
            problems += [f"contains {s!r}" for s in forbidden if s and s in text]
            report[str(page.relative_to(html_root))] = problems
            if screenshots:
                Path(screenshots).mkdir(parents=True, exist_ok=True)
                browser.screenshot(Path(screenshots) / f"{page.stem}.png")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cooplib.book.check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", nargs="?", default="_build/html")
    ap.add_argument("--screenshots", help="write a full-page PNG of every page here")
    ap.add_argument("--width", type=int, default=1400)
    args = ap.parse_args(argv)
    report = check(args.html, args.screenshots, args.width, forbidden=(str(Path.cwd().resolve()),))
    bad = {p: v for p, v in report.items() if v}
    for page, problems in report.items():
        print(f"{'FAIL' if problems else 'ok  '} {page}")
        for problem in problems:
            print(f"       {problem}")
    print(f"{len(report) - len(bad)} of {len(report)} pages clean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
