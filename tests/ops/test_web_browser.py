"""The pages in headless Chromium (Debian's chromium + chromedriver, driven by selenium).

One node (``contourd serve``) with a DCMTK storescp as the planning system:
log in as an operator, push a phantom CT with storescu, see the job arrive in
the queue, open it and see its contours on the CT (the screenshot is kept in
``test-artifacts/web/``), resend it and get the same RTSTRUCT again at the
TPS; then, as a viewer, be refused a model approval.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import REPO_ROOT, require_tool, wait_for
from node_harness import RunningNode, StoreScp, node_with_tps, storescu_push

from inference.phantom import make_phantom_series

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PASSWORD = "a long test password"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


@pytest.fixture
def browser() -> Iterator[object]:
    chromium = require_tool("chromium", "chromium")
    chromedriver = require_tool("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="contourd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[RunningNode, StoreScp]]:
    users = {"otto": "operator", "vera": "viewer"}
    with node_with_tps(tmp_path, users=users, password=PASSWORD) as env:
        yield env.node, env.tps


def _log_in(driver: object, base: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/login")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "username").send_keys(name)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]

    def logged_in() -> bool:
        from selenium.common.exceptions import StaleElementReferenceException

        try:
            headers = driver.find_elements(By.TAG_NAME, "header")  # type: ignore[attr-defined]
            return bool(headers) and f"{name} (" in headers[0].text
        except StaleElementReferenceException:  # the page was replaced between find and read
            return False

    wait_for(logged_in, 20, f"{name} logged in; page: {driver.page_source[:2000]}")  # type: ignore[attr-defined]


def _coloured_fraction(png: bytes) -> float:
    """Share of pixels that are not grey (the CT is grey; contours are coloured)."""
    from matplotlib.image import imread

    rgb = imread(io.BytesIO(png), format="png")[..., :3]
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float(np.mean(spread > 0.2))


def test_operator_sees_the_job_its_contours_and_resends_viewer_is_refused(
    tmp_path: Path, browser: object, node: tuple[RunningNode, StoreScp]
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    running, tps = node
    base = f"http://127.0.0.1:{running.http_port}"
    _log_in(driver, base, "otto")

    series = make_phantom_series(tmp_path / "ct", shape_zyx=(12, 64, 64))
    storescu_push(running.port, series.paths)

    def sent_row() -> tuple[str, str, str] | None:
        """(job id, row text, link target) of the first sent job, read at once:
        the queue page replaces its table every few seconds, so elements found
        on it go stale."""
        from selenium.common.exceptions import StaleElementReferenceException

        driver.get(f"{base}/?state=sent")  # type: ignore[attr-defined]
        try:
            rows = driver.find_elements(By.CSS_SELECTOR, "tr.job")  # type: ignore[attr-defined]
            if not rows:
                return None
            job = str(rows[0].get_attribute("data-job-id"))
            link = rows[0].find_element(By.LINK_TEXT, job).get_attribute("href")
            return job, str(rows[0].text), str(link)
        except StaleElementReferenceException:
            return None

    job_id, row_text, job_link = wait_for(
        sent_row, 90, f"a sent job in the queue; log: {running.log_tail()}"
    )
    assert "body" in row_text
    assert job_link.endswith(f"/jobs/{job_id}")
    driver.get(job_link)  # type: ignore[attr-defined]

    wait_for(
        lambda: driver.execute_script(  # type: ignore[attr-defined]
            "var i = document.getElementById('slice'); return i && i.complete && i.naturalWidth;"
        ),
        60,
        "the slice image loaded",
    )
    rois = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "tr.roi")]  # type: ignore[attr-defined]
    assert any("BODY" in r for r in rois), rois
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "job_page.png"
    driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
    assert shot.stat().st_size > 10_000
    # The image the page shows has the contour drawn in colour on the grey CT.
    src = driver.find_element(By.ID, "slice").get_attribute("src")  # type: ignore[attr-defined]
    png = requests.get(src, auth=("otto", PASSWORD), timeout=30).content
    assert _coloured_fraction(png) > 0.001
    # The slider moves through the slices (the image follows).
    last = int(driver.find_element(By.ID, "slider").get_attribute("max"))  # type: ignore[attr-defined]
    driver.execute_script(  # type: ignore[attr-defined]
        f"var s = document.getElementById('slider'); s.value = {last};"
        "s.dispatchEvent(new Event('input'));"
    )
    assert driver.find_element(By.ID, "slice-number").text == str(last + 1)  # type: ignore[attr-defined]
    assert driver.find_element(By.ID, "slice").get_attribute("src").endswith(f"/{last}.png")  # type: ignore[attr-defined]

    [original] = wait_for(tps.received, 30, "the first RTSTRUCT at the TPS")
    driver.find_element(By.ID, "resend").click()  # type: ignore[attr-defined]
    message = wait_for(lambda: _text_of(driver, "message"), 30, "the resend message")
    assert "queued for tps" in message
    received = wait_for(
        lambda: len(tps.received()) >= 2 and tps.received(), 60, "the resent RTSTRUCT at the TPS"
    )
    assert {ds.SOPInstanceUID for ds in received} == {original.SOPInstanceUID}
    # No patient identifiers on the page.
    patient = series.headers[0]
    page = driver.page_source  # type: ignore[attr-defined]
    for keyword in ("PatientName", "PatientID"):
        value = str(patient.get(keyword, ""))
        if value:
            assert value not in page, keyword

    driver.find_element(By.CSS_SELECTOR, "header form button").click()  # type: ignore[attr-defined]
    _log_in(driver, base, "vera")
    driver.get(f"{base}/models")  # type: ignore[attr-defined]
    card = driver.find_element(  # type: ignore[attr-defined]
        By.CSS_SELECTOR, '.model[data-model="hn-oar"]'
    )
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    refusal = wait_for(lambda: _text_of(driver, "refusal"), 30, "the refusal page")
    assert "physicist" in refusal
    driver.get(f"{base}/api/models")  # type: ignore[attr-defined]
    assert '"status":"imported"' in driver.page_source.replace(" ", "")  # type: ignore[attr-defined]
    if os.environ.get("CONTOURD_KEEP_SCREENSHOTS"):
        driver.save_screenshot(str(ARTIFACTS / "refused.png"))  # type: ignore[attr-defined]


def _text_of(driver: object, element_id: str) -> str | None:
    """The text of the element with ``element_id`` once the page shows it (a click
    that posts a form returns before the answer page has loaded)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.ID, element_id)  # type: ignore[attr-defined]
        return str(found[0].text) if found and found[0].text else None
    except StaleElementReferenceException:  # the page was replaced between find and read
        return None


def test_api_docs_render_without_internet(tmp_path: Path, browser: object) -> None:
    """Swagger UI comes from the node itself (no CDN), so /api/docs renders the
    operations in a browser that reaches nothing but the node."""
    from selenium.webdriver.common.by import By

    from daemon.job_queue import SqliteJobQueue
    from daemon.web.context import WebContext
    from daemon.web.server import WebServer

    queue = SqliteJobQueue(tmp_path / "data")
    server = WebServer(queue, port=0, context=WebContext.for_queue(queue)).start()
    driver = browser
    try:
        driver.get(f"http://127.0.0.1:{server.port}/api/docs")  # type: ignore[attr-defined]

        def operations() -> list[str]:
            found = driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")  # type: ignore[attr-defined]
            return [element.text for element in found]

        wait_for(lambda: len(operations()) > 5, 30, "Swagger UI to list the API's operations")
        assert "/api/jobs" in operations()
        title = driver.find_element(By.CSS_SELECTOR, ".info .title").text  # type: ignore[attr-defined]
        assert title.startswith("contourd")
    finally:
        server.stop()


def test_queue_table_refreshes_in_place_and_keeps_what_is_typed_in_the_filter(
    tmp_path: Path, browser: object, node: tuple[RunningNode, StoreScp]
) -> None:
    """The queue's table refreshes itself without reloading the page, so a filter
    being typed (not yet submitted) survives, and a new job appears."""
    from selenium.webdriver.common.by import By

    driver = browser
    running, _ = node
    base = f"http://127.0.0.1:{running.http_port}"
    _log_in(driver, base, "otto")
    driver.get(f"{base}/")  # type: ignore[attr-defined]
    assert not driver.find_elements(By.CSS_SELECTOR, "tr.job")  # type: ignore[attr-defined]
    text = driver.find_element(By.NAME, "q")  # type: ignore[attr-defined]
    text.send_keys("not submitted")
    driver.find_element(By.TAG_NAME, "h2").click()  # type: ignore[attr-defined]  # focus out
    driver.execute_script("window.loadedOnce = 'yes';")  # type: ignore[attr-defined]

    series = make_phantom_series(tmp_path / "ct", shape_zyx=(12, 64, 64))
    storescu_push(running.port, series.paths)

    def job_rows() -> int:
        return len(driver.find_elements(By.CSS_SELECTOR, "tr.job"))  # type: ignore[attr-defined]

    wait_for(job_rows, 60, f"the pushed series in the table; log: {running.log_tail()}")
    assert driver.execute_script("return window.loadedOnce;") == "yes"  # type: ignore[attr-defined]
    assert driver.find_element(By.NAME, "q").get_attribute("value") == "not submitted"  # type: ignore[attr-defined]
    assert driver.find_element(By.ID, "refreshed").text != "on load"  # type: ignore[attr-defined]
