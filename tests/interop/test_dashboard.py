"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium): it loads, shows the connected clients, kicks one (which a paho client sees as
DISCONNECT 0x98), and its WebSocket MQTT client publishes a message that mosquitto_sub
receives.

Screenshots go to $DASHBOARD_SCREENSHOTS when it is set (docs/ holds the committed ones:
`DASHBOARD_SCREENSHOTS=docs scripts/test.sh`), else to the test's directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import BrokerProcess, free_port
from helpers import V5, Client, MosquittoSub, unique_id

pytestmark = pytest.mark.starling_only

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 15


@pytest.fixture
def ws_broker(tmp_path):
    """A broker with a TCP listener and a WebSocket listener."""
    ws_port = free_port()
    b = BrokerProcess(tmp_path, f"""
[[listener]]
bind = "127.0.0.1:1883"

[[listener]]
bind = "127.0.0.1:{ws_port}"
protocol = "ws"
""")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def browser(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are needed (scripts/install-test-deps.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,860",
                f"--user-data-dir={tmp_path / 'chromium'}"]:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, tmp_path: Path, name: str) -> None:
    out = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(out / f"dashboard-{name}.png"))


def test_dashboard_shows_clients_kicks_one_and_publishes_over_websocket(ws_broker, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    victim_id = unique_id("victim")
    victim = Client(ws_broker.address, victim_id, V5, connect=False)
    other = Client(ws_broker.address, unique_id("steady"), V5, connect=False)
    sub = MosquittoSub(ws_broker.address, "-t", "dash/#", "-V", "5")
    try:
        victim.connect()
        other.connect()
        sub.wait_subscribed()

        browser.get(ws_broker.http_url + "/")
        # The overview's cards come from the API; its charts gain a point every 2 s.
        wait.until(lambda d: "Clients connected" in d.find_element(By.ID, "cards").text)
        wait.until(lambda d: d.find_element(By.ID, "who").text.startswith("Starling"))
        for i in range(20):
            other.publish("dash/warmup", f"{i}", qos=1)
        wait.until(lambda d: int(d.find_element(By.ID, "chart-conn").get_attribute("data-points") or 0) >= 3)
        cards = browser.find_element(By.ID, "cards").text
        assert "3\nClients connected" in cards, cards
        shot(browser, tmp_path, "overview")

        browser.find_element(By.CSS_SELECTOR, "#nav button[data-page=clients]").click()
        row = wait.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, f"#client-rows tr[data-id='{victim_id}']")))
        assert "5.0" in row.text and "127.0.0.1" in row.text
        rows = browser.find_elements(By.CSS_SELECTOR, "#client-rows tr")
        assert {r.get_attribute("data-id") for r in rows} >= {victim_id, other.client_id}
        shot(browser, tmp_path, "clients")

        row.find_element(By.CSS_SELECTOR, "button.kick").click()
        gone = victim.wait_disconnected(WAIT)
        assert gone.rc == 0x98, gone
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f"#client-rows tr[data-id='{victim_id}']"))
        assert "disconnected" in browser.find_element(By.ID, "client-msg").text

        browser.find_element(By.CSS_SELECTOR, "#nav button[data-page=mqtt]").click()
        wait.until(lambda d: d.find_element(By.ID, "ws-url").get_attribute("value").startswith("ws://"))
        browser.find_element(By.ID, "ws-connect").click()
        wait.until(lambda d: d.find_element(By.ID, "ws-state").text == "connected")
        browser.find_element(By.ID, "ws-sub").send_keys("dash/#")
        browser.find_element(By.ID, "ws-subscribe").click()
        browser.find_element(By.ID, "ws-topic").send_keys("dash/hello")
        browser.find_element(By.ID, "ws-payload").send_keys("from the browser")
        browser.find_element(By.ID, "ws-publish").click()
        got = [m for m in sub.wait_messages(21, timeout=WAIT) if m.topic == "dash/hello"]
        assert [m.payload for m in got] == [b"from the browser"]
        # The page's own subscription shows it too.
        wait.until(lambda d: "from the browser" in d.find_element(By.ID, "ws-log").text)
        shot(browser, tmp_path, "mqtt-client")
    finally:
        sub.close()
        victim.close()
        other.close()


def test_dashboard_asks_for_a_key_when_the_api_needs_credentials(tmp_path, browser):
    import subprocess

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    keys = tmp_path / "api-keys"
    key = subprocess.run(
        [os.environ["STARLING_BIN"], "apikey", "--file", str(keys), "create", "ui", "--role", "viewer"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()
    b = BrokerProcess(tmp_path, f"""
[http]
open = false
api_keys_file = "{keys}"
""")
    b.start()
    try:
        browser.get(b.http_url + "/")
        wait = WebDriverWait(browser, WAIT)
        wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
        browser.find_element(By.ID, "key").send_keys(key)
        browser.find_element(By.ID, "key-save").click()
        wait.until(lambda d: d.find_element(By.ID, "who").text.startswith("Starling"))
        assert not browser.find_element(By.ID, "login").is_displayed()
    finally:
        b.stop()
