"""In a real browser (Debian's chromium, driven by Playwright): open the index page of the stack
as `make run` starts it, upload a real photo through the form, land on the job page, watch it
reach `succeeded` without a reload, see the result image, and save a screenshot.

No browser is downloaded: Playwright launches /usr/bin/chromium (scripts/install-system-deps.sh
installs it; PIXELMILL_TEST_CHROMIUM names another binary). Without one the test is skipped on a
developer's machine and fails under CI (CI=true). Screenshots go to $PIXELMILL_ARTIFACTS, else
var/test-artifacts/."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, encode, photo

pytestmark = pytest.mark.e2e

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TERMINAL = ("succeeded", "failed", "blocked", "canceled")


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (under CI the browser test must run: make test installs it as root)")
    pytest.skip(reason)


def _chromium() -> str:
    path = os.environ.get("PIXELMILL_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        _unavailable("no chromium: run scripts/install-system-deps.sh as root (Debian's chromium package)")
    return path


def _artifacts_dir() -> Path:
    path = Path(os.environ.get("PIXELMILL_ARTIFACTS") or ROOT / "var" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    executable = _chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def stack(browser, e2e_stack):  # the browser first: no stack is started when it is missing
    return e2e_stack


def test_upload_in_the_browser_and_watch_the_job_finish(browser, stack, tmp_path):
    from playwright.sync_api import expect

    upload = tmp_path / "astronaut.jpg"
    upload.write_bytes(encode(photo("astronaut", size=320), "JPEG", quality=90))

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console.{msg.type}: {msg.text} ({msg.location.get('url')})")
            if msg.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    failed_responses: list[str] = []
    page.on("response", lambda r: failed_responses.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        page.goto(stack.base + "/")
        expect(page.locator("#submit-form")).to_be_visible()
        page.set_input_files("input[name=images]", str(upload))
        page.check("input[name=engine][value=style]")
        page.check("input[name=style][value=cartoon]")
        page.fill("input[name=size]", "320")
        page.select_option("select[name=upscale]", "2")
        page.click("#submit-form button[type=submit]")
        page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))

        # From here on the page must update itself: a marker set now would vanish with a reload.
        status = page.locator("#status")
        first_status = status.inner_text()
        page.evaluate("window.__pixelmillNoReload = true")
        expect(status).to_have_text(re.compile(r"^\s*succeeded"), timeout=120_000)
        assert page.evaluate("window.__pixelmillNoReload === true"), "the job page reloaded itself"
        assert not first_status.strip().startswith(TERMINAL), \
            f"the job was already {first_status!r} when its page loaded: nothing was updated live"

        result = page.locator("#result")
        expect(result).to_be_visible()
        page.wait_for_function(
            "() => { const img = document.getElementById('result');"
            " return img && img.complete && img.naturalWidth > 0; }", timeout=30_000)
        assert page.evaluate("document.getElementById('result').naturalWidth") == 640  # 320 px × 2
        expect(page.locator("#waiting")).to_be_hidden()

        page.screenshot(path=str(_artifacts_dir() / "job-succeeded.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(_artifacts_dir() / "job-failure.png"), full_page=True)
        raise
    finally:
        page.close()

    assert problems == [], f"errors in the browser console: {problems}"
    assert failed_responses == [], f"failed requests: {failed_responses}"
