"""The live dashboard in a real headless browser (Debian's Chromium, driven through chromedriver)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lambda_pipeline.core.config import ServeSettings
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.serving_layer.client import Client
from lambda_pipeline.serving_layer.server import QueryServer
from tests.helpers import batch_then_speed, ingest_once

ARTIFACTS = Path(
    os.environ.get("LAMBDA_PIPELINE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOTAL = "SELECT sum(events) AS n FROM serving.page_activity"


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _shown(browser, until_total: int | None = None, timeout: float = 90.0) -> dict[str, int]:
    """Wait (bounded) until the page has drawn its charts (and shows ``until_total``); what it shows."""
    from selenium.webdriver.support.ui import WebDriverWait

    def drawn(driver) -> dict[str, int] | None:
        body = driver.find_element("tag name", "body")
        if body.get_attribute("data-ready") != "true":
            return None
        total = driver.find_element("id", "total").get_attribute("data-value")
        charts = len(driver.find_elements("css selector", ".chart svg"))
        shown = {
            "total": round(float(total)),
            "master": int(body.get_attribute("data-master-version")),
            "charts": charts,
        }
        return shown if until_total is None or shown["total"] == until_total else None

    return WebDriverWait(browser, timeout, poll_frequency=0.25).until(drawn)


@pytest.mark.integration
def test_the_dashboard_shows_the_merged_view_and_moves(spark, settings, locations, browser) -> None:
    generator = ClickstreamGenerator(9, malformed_fraction=0.05, duplicate_fraction=0.05)
    batch_then_speed(spark, settings, locations, generator, batch=(400, 2), speed=(150, 1))

    server = QueryServer(spark, CLICKSTREAM, locations, ServeSettings(port=0)).start()
    try:
        browser.get(f"{server.url}/dashboard")
        shown = _shown(browser)
        answer = Client(server.url).query(TOTAL)
        assert answer.pin["master_table_version"] == shown["master"]  # the same pin: nothing was ingested since
        assert shown["total"] == answer.table.column("n")[0].as_py() == 550
        assert shown["charts"] == 4
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

        generator.write(locations.landing, 80, files=1)
        ingest_once(spark, settings, locations)
        moved = _shown(browser, until_total=630)
        assert moved["master"] > shown["master"]
        browser.save_screenshot(str(ARTIFACTS / "dashboard-after-new-events.png"))
    finally:
        server.stop()
