"""The HTML report and site as a real browser renders them (headless Chromium).

Checks what a reader sees: the leaderboard tables and the plots are there,
no template syntax leaked, and labels or errors carrying HTML stay text. A
screenshot is kept in test-artifacts/ for a human look.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from bench.report import build_report, publish_site
from bench.suite import load_suite
from tests.test_report import XSS_ERROR, XSS_METHOD, write_synthetic

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser"))
                 if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


class Dom(HTMLParser):
    """Elements and text of a serialized DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag
                and all(v in (a.get(k) or "").split() for k, v in attrs.items())]


def parse(html: str) -> Dom:
    dom = Dom()
    dom.feed(html)
    return dom


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    suite_path, results = write_synthetic(tmp, seeds=[0, 1])
    suite, _ = load_suite(suite_path)
    build_report(suite, results, tmp / "reports" / "synth")
    publish_site(tmp / "reports")
    return tmp / "reports" / "site"


def test_report_renders_tables_plots_and_escapes(site, tmp_path):
    page = site / "synth" / "index.html"
    dom_html = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert "{{" not in dom_html and "{%" not in dom_html and "}}" not in dom_html
    dom = parse(dom_html)
    text = " ".join(dom.text)
    # one leaderboard per budget tier, with headers that carry units and arrows
    assert len(dom.find("table", **{"class": "leaderboard"})) == 3
    assert "top-1 % ↑" in text and "MACs ×dense ↓" in text and "MACs ≤ 0.125× dense" in text
    # every plot is an image whose file sits beside the page
    plots = [a["src"] for a in dom.find("img")]
    assert len(plots) == 4 and all((page.parent / src).stat().st_size > 1000 for src in plots)
    # labels and errors with HTML in them are text, never markup
    assert not dom.find("script") and XSS_METHOD in text
    assert XSS_ERROR.split(" | ")[0] in text
    assert all(not src.startswith("x") for src in plots)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom_html


def test_site_index_links_suites(site, tmp_path):
    dom = parse(chromium(tmp_path, "--dump-dom", (site / "index.html").as_uri()).stdout)
    links = [a.get("href") for a in dom.find("a")]
    assert "synth/index.html" in links and not dom.find("script")
    assert all((site / link).is_file() for link in links), links  # no dead links
    assert "Ranking across suites" in " ".join(dom.text)


def test_screenshot_shows_rendered_plots(site, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-synth.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,3400",
             (site / "synth" / "index.html").as_uri())
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 3000 and img.shape[1] >= 1200
    # the plots' method colours (tab10 blue and orange) only come from rendered plots
    for rgb in ((31, 119, 180), (255, 127, 14)):
        close = np.abs(img * 255 - np.array(rgb)).max(axis=-1) < 12
        assert close.sum() > 200, f"no pixels of plot colour {rgb} in {shot}"
