"""The live activity page in a real headless browser (Debian's Chromium through
chromedriver) against the real proxy: sign in with the control token, traffic made during
the test appears within 2 s, filtering by rule works, each decision links to its evidence
record, and killing a session from the page denies that session's next call."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_console_browser import APT_TIMEOUT, browser, chromium, webdriver_mod  # noqa: F401
from test_observe import SECRET, TOKEN, call, start

from proxy.state import session_key

pytestmark = pytest.mark.e2e

SESSION = "browser-session-1"
APPEAR_WITHIN = 2.0


@pytest.mark.timeout(APT_TIMEOUT + 180)     # the first run may install Chromium
def test_activity_page_streams_filters_links_and_kills(
        browser: Any, tmp_path: Path, mcp_server: Any, proxy_process: Any) -> None:  # noqa: F811
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    env = start(tmp_path, mcp_server, proxy_process)
    wait = WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,))
    session = {"x-fiveplane-session": SESSION}

    # not signed in: the login form, nothing of the traffic
    first = call(env, "delete_all", {"confirm": True}, headers=session)
    browser.get(env["control"] + "/activity")
    assert browser.find_element(By.ID, "login-form").is_displayed()
    assert first["error"]["data"]["decision_id"] not in browser.page_source
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "approver"), "operator"))
    assert browser.current_url.endswith("/activity")
    wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, f'tr[data-id="{first["error"]["data"]["decision_id"]}"]')))

    # traffic made now shows up within 2 s
    delays = []
    for i in range(3):
        msg = call(env, "delete_all", {"confirm": True}, headers=session, rpc_id=10 + i)
        did = msg["error"]["data"]["decision_id"]
        sent = time.monotonic()
        while not browser.find_elements(By.CSS_SELECTOR, f'tr[data-id="{did}"]'):
            assert time.monotonic() - sent < APPEAR_WITHIN, f"{did} not shown within 2 s"
            time.sleep(0.02)
        delays.append(time.monotonic() - sent)
    print(f"\ndecision shown on the page after {', '.join(f'{d:.2f}' for d in delays)} s")
    for i in range(2):
        assert "result" in call(env, "echo", {"text": f"hello {SECRET}"}, headers=session,
                                rpc_id=20 + i)
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-id="' + did +
                                                      '"]')))
    assert row.find_element(By.CSS_SELECTOR, ".verdict").text == "deny"
    assert row.find_element(By.CSS_SELECTOR, ".rule").text == "no-wipe"
    assert row.find_element(By.CSS_SELECTOR, ".tool").text == "delete_all"
    assert "wiping customer data is not allowed" in row.text
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#decision-rows tr")) >= 6)
    counters = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, 'tr[data-rule="no-wipe"] .deny')))
    assert counters.text == "4"
    assert SECRET not in browser.page_source

    # filter by rule: only the four no-wipe denials remain
    browser.find_element(By.ID, "f-rule").send_keys("no-wipe")

    def only_rule(b: Any) -> bool:
        rows = b.find_elements(By.CSS_SELECTOR, "#decision-rows tr")
        return len(rows) == 4 and all(r.get_attribute("data-rules") == "no-wipe" for r in rows)

    wait.until(only_rule)
    browser.find_element(By.ID, "f-clear").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#decision-rows tr")) >= 6)

    # the evidence link opens the record of that decision
    link = browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{did}"] a.evidence')
    href = link.get_attribute("href")
    assert href.endswith(f"/api/evidence/{did}")

    # kill the session from the page: its next call is denied
    key = session_key(None, SESSION)
    kill = wait.until(ec.element_to_be_clickable(
        (By.CSS_SELECTOR, f'button[data-action="kill"][data-id="{key}"]')))
    kill.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"Killed session {key}"))
    denied = call(env, "echo", {"text": "after the kill"}, headers=session, rpc_id=30)
    assert denied["error"]["data"]["rule_ids"] == ["session.killed"]
    assert "killed from the activity page" in denied["error"]["message"]
    other = call(env, "echo", {"text": "another session"},
                 headers={"x-fiveplane-session": "browser-session-2"}, rpc_id=31)
    assert "result" in other
    browser.save_screenshot(str(tmp_path / "activity.png"))

    browser.get(href)
    record = json.loads(browser.find_element(By.TAG_NAME, "body").text)
    assert record["body"]["id"] == did and record["body"]["decision"]["rule_ids"] == ["no-wipe"]
    assert "sealed" not in record["body"]
