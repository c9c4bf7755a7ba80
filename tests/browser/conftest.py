"""Browser tests: Chromium (Debian's, at /usr/bin/chromium) driven by Playwright against the live
server of the test run.

They are skipped, saying why, where /usr/bin/chromium is missing (`apt-get install chromium`;
`.ci/run` installs it when it runs as root). Playwright's own browser downloads are not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser(django_db_setup: None) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests")
    from playwright.sync_api import sync_playwright

    # While Playwright's synchronous API runs, this thread has an event loop, which Django takes
    # for async code and refuses database calls in; every call made here is synchronous. The
    # allowance lasts as long as Playwright does: from after the test database is made (hence
    # `django_db_setup`) to the end of the module, after its last test's database teardown, so
    # neither the rest of the run nor its subprocesses inherit it.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, settings: Any) -> Iterator[Any]:
    # The live server speaks plain HTTP: cookies marked Secure would not be sent back.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


@pytest.fixture
def screenshot() -> Any:
    """Save a full-page PNG of the page as docs/screenshots/<name>.png (the README shows them)."""

    def save(page: Any, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save


@pytest.fixture
def target(settings: Any, target_schema: str) -> str:
    """The app's builder applies to a fresh schema of the test target database (as in tests/app)."""
    settings.WF106_TARGET_SCHEMA = target_schema
    return target_schema
