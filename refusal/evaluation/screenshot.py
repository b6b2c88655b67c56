"""A PNG of the first screen of an HTML report in headless Chromium:
``python -m refusal.evaluation.screenshot report.html out.png [--width 1280 --height 900 --full-page]``, or of one
section of it (``--section verdict``: the element with that id).

Needs the ``playwright`` package (the ``dev`` extra) and a Chromium on the machine (``apt-get install chromium``;
Playwright's own browser download is not used): found as ``$CHROMIUM`` or ``chromium``/``chromium-browser``/
``google-chrome`` on the PATH. The page is loaded from disk (``file://``), so a self-contained report needs no
network.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# no sandbox: Chromium's sandbox cannot start as root (CI, containers)
LAUNCH_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")


def chromium_path() -> str | None:
    """The system Chromium: ``$CHROMIUM`` when set, else the first of BROWSERS on the PATH, else None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def launch(playwright):
    """A headless Chromium browser from a started ``sync_playwright()``; RuntimeError when none is installed."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no Chromium found: apt-get install chromium, or set CHROMIUM=/path/to/chromium")
    return playwright.chromium.launch(executable_path=exe, headless=True, args=list(LAUNCH_ARGS))


def screenshot(page_path: str | os.PathLike, out: str | os.PathLike, width: int = 1280, height: int = 900,
               full_page: bool = False, section: str | None = None) -> Path:
    """Render ``page_path`` at ``width`` x ``height`` and write its first screen (the whole page, or the element whose
    id is ``section``) to ``out``."""
    from playwright.sync_api import sync_playwright

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(Path(page_path).resolve().as_uri(), wait_until="load")
            if section:
                page.locator(f"[id='{section}']").screenshot(path=str(out))
            else:
                page.screenshot(path=str(out), full_page=full_page)
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", help="HTML file, e.g. report.html")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--full-page", action="store_true")
    ap.add_argument("--section", help="id of the one element to capture (a report section's key, e.g. verdict)")
    a = ap.parse_args(argv)
    print(screenshot(a.page, a.out, a.width, a.height, a.full_page, a.section))


if __name__ == "__main__":
    main()
