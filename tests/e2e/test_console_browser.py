"""The approval console in a real headless browser (Debian's Chromium driven by Selenium
through Debian's chromedriver; no browser download).

Without the token the console is the login page and the API answers 401 (403 for a wrong
token); with it, the pending call is shown (tool, rule, principal chain, redacted
arguments), Approve is clicked, the store records the console's approver, and the call
held on it proceeds.

The session fixture installs ``chromium`` and ``chromium-driver`` with apt-get when
``/usr/bin/chromium`` is missing (CI runs as root). Selenium comes from the test extras.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.action import Action, Kind, StopPoint
from proxy.approvals import HoldResult, Outcome, SqliteApprovalStore, Status, hold, request_for
from proxy.control import ControlAuth, ThreadedControlServer, create_app
from proxy.decision import Decision, Plane, Verdict
from proxy.principal import Link, Principal, PrincipalKind
from proxy.state import MemoryStore

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "browser-console-token-0123456789abcdef"
APPROVER = "console-approver"
SECRET = "sk-live-0123456789ABCDEFghijKLMN"
SESSION = "3f9a0c1d2e4b.0000000000000000000000000000beef"
CHAIN = Principal((Link("alice", PrincipalKind.HUMAN), Link("planner", PrincipalKind.AGENT),
                   Link("refunder", PrincipalKind.AGENT)))
APT_TIMEOUT = 900


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True,
                          timeout=APT_TIMEOUT, check=False)


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of Debian's Chromium and chromedriver, installed with apt-get if missing."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if shutil.which("apt-get") is None:
            pytest.fail("Chromium is missing and apt-get is not available: install Debian's "
                        "`chromium` and `chromium-driver`")
        packages = ("install", "-y", "-q", "chromium", "chromium-driver")
        result = _apt(*packages)
        if result.returncode != 0:          # stale or missing package lists
            _apt("update", "-q")
            result = _apt(*packages)
        if result.returncode != 0 or not CHROMIUM.exists():
            pytest.fail("`apt-get install chromium chromium-driver` failed (run as root):\n"
                        + result.stdout[-2000:] + result.stderr[-2000:])
    return str(CHROMIUM), str(CHROMEDRIVER)


@pytest.fixture
def webdriver_mod() -> Any:
    try:
        import selenium  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("selenium is not installed: it belongs to the test extras")
        pytest.skip("selenium is not installed (pip install selenium)")
    from selenium import webdriver

    return webdriver


@pytest.fixture
def browser(chromium: tuple[str, str], webdriver_mod: Any, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):     # selenium's own client must talk to chromedriver direct
        monkeypatch.delenv(name, raising=False)

    binary, driver_path = chromium
    options = webdriver_mod.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--no-proxy-server",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1100"):
        options.add_argument(arg)
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver_mod.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[ThreadedControlServer, SqliteApprovalStore, str]]:
    approvals = SqliteApprovalStore(tmp_path / "state.sqlite")
    sessions = MemoryStore()
    sessions.touch(SESSION, "3f9a0c1d2e4b" + "0" * 52, time.time())
    call = Action(kind=Kind.MCP, stop=StopPoint.REQUEST_BODY, scheme="http", host="127.0.0.1",
                  port=9000, method="POST", path="/mcp", server="bank",
                  mcp_method="tools/call", name="refund", principal=CHAIN, session=SESSION,
                  arguments={"amount": 900, "customer": "c-17", "api_key": SECRET,
                             "memo": f"charge back, use {SECRET}"})
    escalate = Decision(Verdict.ESCALATE, ("refund.over_threshold",),
                        "refunds over 500 EUR need a human", "sha256:policy", Plane.ENDPOINT)
    request = request_for(approvals, call, escalate)
    app = create_app(approvals, ControlAuth({APPROVER: TOKEN}), sessions)
    with ThreadedControlServer(app) as server:
        yield server, approvals, request.id
    approvals.close()


@pytest.mark.timeout(APT_TIMEOUT + 120)     # the first run may install Chromium
def test_console_login_see_and_approve(browser: Any, control: Any, tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    server, approvals, rid = control
    wait = WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,))

    # without the token: the API refuses, the console is the login page
    api = f"{server.url}/api/approvals"
    assert httpx.get(api, trust_env=False).status_code == 401
    assert httpx.get(api, trust_env=False,
                     headers={"authorization": "Bearer wrong-token-0123456789"}
                     ).status_code == 403
    browser.get(api)
    assert "unauthenticated" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(server.url + "/")
    assert browser.find_element(By.ID, "login-form").is_displayed()
    assert rid not in browser.page_source and "refund" not in browser.page_source

    # a wrong token stays on the login page
    browser.find_element(By.ID, "token").send_keys("wrong-token-0123456789")
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.presence_of_element_located((By.ID, "login-error")))
    assert rid not in browser.page_source

    # the agent's call is held on this request meanwhile
    held: list[HoldResult] = []
    holder = threading.Thread(target=lambda: held.append(asyncio.run(
        hold(approvals, approvals.get(rid), timeout=60))), daemon=True)
    holder.start()

    # log in with the token
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "approver"), APPROVER))
    cookie = browser.get_cookie("fiveplane_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]

    # the pending call: tool, rule, reason, principal chain, redacted arguments, time left
    card = wait.until(ec.visibility_of_element_located((By.ID, f"approval-{rid}")))
    text = card.text
    assert "refund" in text and "on bank" in text
    assert "refund.over_threshold" in text and "refunds over 500 EUR need a human" in text
    assert "alice" in text and "planner" in text and "refunder" in text
    assert '"amount": 900' in text and '"api_key": "***"' in text
    assert '"memo": "charge back, use ***"' in text
    left = card.find_element(By.CSS_SELECTOR, ".left").text
    assert left.endswith("s") and left != "expired"
    assert SECRET not in browser.page_source
    browser.save_screenshot(str(tmp_path / "console-pending.png"))

    # approve
    wait.until(ec.element_to_be_clickable(
        (By.CSS_SELECTOR, f'button[data-action="approve"][data-id="{rid}"]'))).click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "flash"), f"Approved {rid}"))
    browser.save_screenshot(str(tmp_path / "console-approved.png"))
    assert not browser.find_elements(By.ID, f"approval-{rid}")

    decided = approvals.get(rid)
    assert decided.status is Status.APPROVED
    assert decided.approver == APPROVER

    # the held call proceeds, using the approval once
    holder.join(10)
    assert held and held[0].outcome is Outcome.APPROVED
    assert approvals.get(rid).consumed_at is not None
