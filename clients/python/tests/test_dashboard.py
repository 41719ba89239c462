"""The dashboard in a real browser: headless Chromium (Debian's package)
driven through chromedriver (WebDriver). An auditor signs in, finds an
experiment this test registered on the active page, follows it to its
timeline, searches the audit log and checks the chain; a requester is
refused. With SANDPIT_SCREENSHOTS=DIR it saves the README's screenshots.

.ci/run installs chromium and chromium-driver; without them this fails
(set SANDPIT_SKIP_BROWSER=1 to skip it on a machine that has none)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

import harness
import sandpit

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    os.environ.get("SANDPIT_SKIP_BROWSER") == "1", reason="SANDPIT_SKIP_BROWSER=1"
)


@pytest.fixture
def browser() -> Iterator["object"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "headless Chromium is needed: apt-get install chromium chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver, name: str) -> None:
    out = os.environ.get("SANDPIT_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(out) / f"{name}.png"))


def _click_and_load(driver, element) -> None:
    """Clicks `element` and waits for the page it leads to (a click does not wait).

    The old page is marked before the click and the wait is for a complete
    document without the mark. Selenium's `staleness_of` asks the old element
    and chromedriver can answer that with "Node with given id does not belong
    to the document" (not a stale-element error) while the page is swapped,
    which failed CI once; questions asked mid-navigation are retried."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.__sandpitOldPage = true")
    element.click()
    WebDriverWait(driver, 20, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return window.__sandpitOldPage === undefined && document.readyState === 'complete'"
        )
    )


def _sign_in(driver, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "active")
    assert "/sign-in" in driver.current_url, driver.current_url
    field = driver.find_element(By.ID, "token")
    label = driver.find_element(By.CSS_SELECTOR, "label[for=token]")
    assert "Token" in label.text
    field.send_keys(token)
    _click_and_load(driver, driver.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]"))


def test_an_auditor_follows_an_experiment_to_its_timeline_and_a_requester_is_refused(
    daemon: harness.Daemon, alice: sandpit.Client, approver: sandpit.Client, run_id: str, browser
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    base = (daemon.data_dir / "dashboard.addr").read_text().strip()
    title = f"Browser test {run_id}"
    exp = alice.register(
        title=title,
        purpose="Find this experiment from the dashboard",
        classification="OFFICIAL-SENSITIVE",
        ai_tools=["pandas"],
        risks=[sandpit.Risk(description="Small cells disclose people", likelihood="medium", impact="high",
                            mitigation="Suppress counts under 10", owner="alice")],
    )
    approver.approve(exp.id, conditions="Outputs checked before release")
    with alice.create(experiment=exp, profile=harness.WEB_PROFILE, classification="OFFICIAL", ttl="5m") as sb:
        # The skip link is the first stop for a keyboard.
        driver.get(base + "sign-in")
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        assert driver.switch_to.active_element.text == "Skip to content"

        _sign_in(driver, base, harness.AUDITOR)
        assert driver.current_url == base + "active", driver.current_url
        cookie = driver.get_cookie("sandpit-session")
        assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", cookie
        assert driver.find_element(By.TAG_NAME, "h1").text == "Active experiments"
        row = driver.find_element(By.XPATH, f"//tr[.//a[normalize-space()='{title}']]")
        assert "Approved by amir (alg)" in row.text and "Outputs checked before release" in row.text, row.text
        assert "Small cells disclose people" in row.text and sb.id in row.text, row.text
        _shot(driver, "active")

        _click_and_load(driver, row.find_element(By.LINK_TEXT, title))
        assert driver.current_url == base + f"experiments/{exp.id}", driver.current_url
        assert driver.find_element(By.TAG_NAME, "h1").text == title
        timeline = driver.find_element(By.XPATH, "//h2[@id='timeline']/following-sibling::div[1]//table")
        actions = [td.text for td in timeline.find_elements(By.CSS_SELECTOR, "tbody td:nth-child(4)")]
        assert actions[:2] == ["Register experiment", "Approve experiment"] and "Create sandbox" in actions, actions
        driver.execute_script("document.getElementById('sandboxes').scrollIntoView()")
        _shot(driver, "experiment")

        _click_and_load(driver, driver.find_element(By.LINK_TEXT, "Audit log"))
        driver.find_element(By.ID, "experiment").send_keys(exp.id)
        _click_and_load(driver, driver.find_element(By.CSS_SELECTOR, "form.filters button"))
        rows = driver.find_elements(By.CSS_SELECTOR, "table tbody tr")
        assert len(rows) >= 3 and all(exp.id in r.text for r in rows), [r.text for r in rows]
        _shot(driver, "audit")

        _click_and_load(driver, driver.find_element(By.LINK_TEXT, "Verification"))
        _click_and_load(driver, driver.find_element(By.XPATH, "//button[normalize-space()='Recompute every hash']"))
        assert "All" in driver.find_element(By.CSS_SELECTOR, "[role=status]").text
        _shot(driver, "verification")

        _click_and_load(driver, driver.find_element(By.XPATH, "//button[normalize-space()='Sign out']"))
        assert "/sign-in" in driver.current_url and driver.get_cookie("sandpit-session") is None

    # A requester is refused and gets no session.
    _sign_in(driver, base, harness.TEAM_A)
    body = driver.find_element(By.TAG_NAME, "main").text
    assert "Signing in was refused" in body and "alice has [requester]" in body, body
    assert driver.get_cookie("sandpit-session") is None
    driver.get(base + "audit")
    assert "/sign-in" in driver.current_url
