"""The browser itself: Playwright drives Debian's Chromium, and the fixture's checks can fail."""

from __future__ import annotations

from playwright.sync_api import BrowserContext, Page

from .conftest import assert_clean, watch


def test_chromium_renders_and_reports_script_errors(page: Page) -> None:
    page.set_content("<html><body><h1 id=t>医保 ok</h1></body></html>")
    assert page.inner_text("#t") == "医保 ok"
    assert_clean(page)
    page.set_content("<html><body><script>undefined_function()</script></body></html>")
    page.wait_for_timeout(50)
    assert any("undefined_function" in e for e in page.console_errors)  # type: ignore[attr-defined]


def test_watch_is_required_for_assert_clean(context: BrowserContext) -> None:
    raw = context.new_page()
    try:
        try:
            assert_clean(raw)
        except AssertionError:
            pass
        else:
            raise AssertionError("assert_clean passed a page nobody watched")
        assert_clean(watch(raw))
    finally:
        raw.close()
