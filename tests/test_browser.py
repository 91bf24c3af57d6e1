"""The HTML report and site in a real browser: Selenium driving Debian's headless Chromium.

Clicks what a reader clicks: a column header sorts, the model filter hides
the other model's rows, a cell that was not run is on screen with its state,
a record link opens the record's JSON. A screenshot is kept under
test-artifacts/ for a human look (CI keeps that folder as an artifact). The
tests skip when chromium, chromedriver or selenium is missing
(Debian: apt-get install chromium chromium-driver; pip install selenium).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from bench.report import build_report, publish_site
from tests.test_report import XSS_METHOD, write_synthetic

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and Path(p).exists()),
                None)
DRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "")
               if p and Path(p).exists()), None)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="chromium/chromedriver not installed (Debian: apt-get install chromium "
           "chromium-driver)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, set[str]]:
    """A site from two models x two seeds, with three cells of one model never run."""
    tmp = tmp_path_factory.mktemp("browser")
    _, results = write_synthetic(tmp, seeds=[0, 1], wide=True)
    manifest = json.loads((results / "manifest.json").read_text())
    not_run = set()
    for c in manifest["cells"]:
        if c["model"] == "mlp" and c["method"] == "svd" and c["seed"] == 1:
            (results / "cells" / f"{c['cell_id']}.json").unlink()
            not_run.add(c["cell_id"])
    build_report(results, tmp / "reports" / "synth")
    publish_site(tmp / "reports", include_examples=True)
    return tmp / "reports" / "site", not_run


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def cells_rows(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#cells tbody tr")


def column(driver, name: str) -> int:
    heads = driver.find_elements(By.CSS_SELECTOR, "#cells thead th")
    return next(i for i, th in enumerate(heads) if th.text.strip().startswith(name))


def visible_values(driver, index: int) -> list[str]:
    return [r.find_elements(By.TAG_NAME, "td")[index].text for r in cells_rows(driver)
            if r.is_displayed()]


def test_header_click_sorts_the_column(site, browser):
    browser.get((site[0] / "synth" / "index.html").as_uri())
    idx = column(browser, "top-1")
    header = browser.find_elements(By.CSS_SELECTOR, "#cells thead th")[idx]
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    values = [v for v in visible_values(browser, idx) if v not in ("n/a", "–")]
    nums = [float(v) for v in values]
    assert len(nums) > 10 and nums == sorted(nums)
    # rows without a number (not run, failed) stay below the numbers
    all_values = visible_values(browser, idx)
    assert all(v == "n/a" for v in all_values[len(nums):])
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    nums = [float(v) for v in visible_values(browser, idx) if v not in ("n/a", "–")]
    assert nums == sorted(nums, reverse=True)


def test_model_filter_hides_the_other_models_rows(site, browser):
    browser.get((site[0] / "synth" / "index.html").as_uri())
    rows = cells_rows(browser)
    assert {r.get_attribute("data-model") for r in rows} == {"mlp", "mlp-wide"}
    Select(browser.find_element(By.ID, "filter-model")).select_by_value("mlp-wide")
    shown = [r for r in rows if r.is_displayed()]
    assert shown and all(r.get_attribute("data-model") == "mlp-wide" for r in shown)
    assert not any(r.is_displayed() for r in rows if r.get_attribute("data-model") == "mlp")
    assert browser.find_element(By.ID, "shown-cells").text == str(len(shown))
    assert not browser.find_element(By.ID, "mlp-digits").is_displayed()  # its section too
    Select(browser.find_element(By.ID, "filter-model")).select_by_value("")
    assert all(r.is_displayed() for r in rows)


def test_not_run_cells_are_visible_with_their_state(site, browser):
    browser.get((site[0] / "synth" / "index.html").as_uri())
    _, not_run = site
    for cell_id in not_run:
        row = browser.find_element(By.CSS_SELECTOR, f'#cells tr[data-cell="{cell_id}"]')
        browser.execute_script("arguments[0].scrollIntoView()", row)
        assert row.is_displayed() and "not run" in row.text
        assert row.find_elements(By.TAG_NAME, "a") == []  # no record to link
    # the leaderboard shows the missing seed, the header says what is missing
    assert "(n=1 of 2)" in browser.find_element(By.ID, "mlp-digits").text
    assert "3 not run" in browser.find_element(By.TAG_NAME, "header").text


def test_record_link_opens_the_json(site, browser):
    page = site[0] / "synth" / "index.html"
    browser.get(page.as_uri())
    link = browser.find_element(By.CSS_SELECTOR, "#cells a.record")
    cell_id = link.find_element(By.XPATH, "./ancestor::tr").get_attribute("data-cell")
    browser.execute_script("arguments[0].scrollIntoView()", link)
    link.click()
    assert browser.current_url.endswith(f"/records/{cell_id}.json")
    record = json.loads(browser.find_element(By.TAG_NAME, "body").text)
    assert record["cell_id"] == cell_id and record["schema_version"] == 2


def test_page_is_escaped_and_screenshot_shows_plots(site, browser):
    browser.get((site[0] / "synth" / "index.html").as_uri())
    # labels carrying HTML are text: no element was injected, the text is there verbatim
    assert XSS_METHOD in browser.find_element(By.TAG_NAME, "main").text
    scripts = browser.find_elements(By.TAG_NAME, "script")
    assert len(scripts) == 1 and not scripts[0].get_attribute("src")  # ours, inlined
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) >= 8 and all(
        browser.execute_script("return arguments[0].naturalWidth", im) > 100 for im in images)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-synth.png"
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(int(height), 6000))
    browser.save_screenshot(str(shot))
    browser.set_window_size(1400, 1000)
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    # the plot colours of svd and svd-global only come from rendered plots and swatches
    for m in ("svd", "svd-global"):
        from bench.report.plots import method_style

        rgb = np.array(method_style(m)[0][:3]) * 255
        close = np.abs(img * 255 - rgb).max(axis=-1) < 12
        assert close.sum() > 200, f"no pixels of {m}'s colour in {shot}"


def test_site_index_links_suites_and_sorts(site, browser):
    browser.get((site[0] / "index.html").as_uri())
    links = [a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")]
    assert any(h.endswith("synth/index.html") for h in links)
    assert all(Path(h.removeprefix("file://")).is_file() for h in links), links
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Ranking across suites" in text and "Built " in text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "site-index.png"))
