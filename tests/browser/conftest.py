"""Real headless Chromium for the page tests: Debian's ``chromium`` driven by Playwright.

Why Debian's browser and not one Playwright downloads: ``make test`` installs system packages through
apt-get and nothing else may be fetched at run time (the CI machine reaches only package registries).
One browser per test package (starting Chromium costs a second or two), closed when this package's
tests end: Playwright's sync API keeps its event loop marked running on the main thread while it
lives, so ``asyncio.run`` anywhere else in the session would fail. Page tests therefore run their
servers in subprocesses or threads, never with ``asyncio.run`` on the main thread. Each test gets its
own context (cookies, storage) and page, so tests do not see each other's sessions.

Every page a test opens records the browser console's errors and the page's uncaught exceptions in
``page.console_errors``; ``assert_clean(page)`` fails a test on any of them, so a page that renders but
throws is a failure, not a pass. ``shot(page, name)`` saves a screenshot under
``tests/browser/screenshots/`` (kept out of git) and checks it is a non-blank PNG.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = os.environ.get("YIBAO_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
#: The smallest desk screen the pages must be usable on.
VIEWPORT = {"width": 1366, "height": 768}


def _chromium() -> str:
    path = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install chromium`, which "
            "`make test` does) or point $YIBAO_CHROMIUM at a Chromium binary"
        )
    return path


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=_chromium(),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=VIEWPORT, ignore_https_errors=False, locale="zh-CN")
    try:
        yield ctx
    finally:
        ctx.close()


def watch(page: Page) -> Page:
    """Record the page's console errors and uncaught exceptions in ``page.console_errors``."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.console_errors = errors  # type: ignore[attr-defined]
    return page


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    p = watch(context.new_page())
    try:
        yield p
    finally:
        p.close()


def assert_clean(page: Page) -> None:
    """Fail on any console error or uncaught exception the page has had so far."""
    errors = getattr(page, "console_errors", None)
    assert errors is not None, "page was not opened through the page fixture or watch()"
    assert not errors, f"{page.url}: " + "; ".join(errors)


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot and check it is a PNG of the page's size, not blank."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    data = page.screenshot(path=str(path), full_page=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{name}: not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= VIEWPORT["width"] and height >= 100, f"{name}: {width}x{height}"
    # A blank page compresses to almost nothing; any rendered text and layout does not.
    assert len(data) > 5000, f"{name}: screenshot is {len(data)} bytes, the page looks blank"
    assert_clean(page)
    return path
