"""What a report shows about a partial suite, paired speedups, ledgers and method styles."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd

from bench.report import build_report
from bench.report.plots import DPI, method_style
from tests.test_report import XSS_METHOD, write_synthetic


class Rows(HTMLParser):
    """Rows of the all-cells table: data-cell id -> (class, cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[str, list[str]]] = {}
        self._cur: str | None = None
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-cell" in a:
            self._cur = a["data-cell"]
            self.rows[self._cur] = (a.get("class", ""), [])
        elif tag == "td" and self._cur:
            self.rows[self._cur][1].append("")
            self._in_td = True

    def handle_endtag(self, tag):
        if tag == "tr":
            self._cur = None
        if tag == "td":
            self._in_td = False

    def handle_data(self, data):
        if self._cur and self._in_td:
            self.rows[self._cur][1][-1] += data


def partial_suite(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The synthetic suite with one not-applicable, one failed and all svd-global cells of
    one seed missing; returns the results dir and the state each changed cell must show."""
    _, results = write_synthetic(tmp_path, seeds=[0, 1], fail_one=True)
    manifest = json.loads((results / "manifest.json").read_text())
    want = {}
    for c in manifest["cells"]:
        path = results / "cells" / f"{c['cell_id']}.json"
        rec = json.loads(path.read_text())
        if c["method"] == "svd-global" and c["seed"] == 1:
            path.unlink()
            want[c["cell_id"]] = "not run"
        elif c["method"] == "svd" and c["target_label"] == "macs<=0.125" and c["seed"] == 0:
            path.write_text(json.dumps({**rec, "status": "not_applicable", "metrics": {},
                                        "reason": "no layer it can factorize"}))
            want[c["cell_id"]] = "not applicable"
        elif rec["status"] == "failed":
            want[c["cell_id"]] = "failed"
    return results, want


def test_partial_suite_renders_every_expected_cell_with_its_state(tmp_path):
    results, want = partial_suite(tmp_path)
    out = tmp_path / "report"
    build_report(results, out)
    manifest = json.loads((results / "manifest.json").read_text())
    parser = Rows()
    parser.feed((out / "index.html").read_text())
    assert set(parser.rows) == {c["cell_id"] for c in manifest["cells"]}
    states = {cid: texts[6] for cid, (_, texts) in parser.rows.items()}
    for cid, state in want.items():
        assert states[cid] == state, cid
    assert sum(s == "not run" for s in states.values()) == 3
    na = parser.rows[next(c for c, s in want.items() if s == "not applicable")][1]
    assert "no layer it can factorize" in na[13] and na[-1] == "JSON"
    notrun = parser.rows[next(c for c, s in want.items() if s == "not run")][1]
    assert notrun[-1] == "–"  # no record to link
    md = (out / "README.md").read_text()
    assert "> **Incomplete:** This suite promises 20 cells and holds results for 15" in md
    assert "(3 not run, 1 failed, 1 not applicable)" in md
    assert "no result for seed 1" not in md  # other methods have seed 1
    # the leaderboard rows keep the gaps visible, and the tier with a gap says which
    tier = md.split("### MACs ≤ 0.125× dense")[1].split("###")[0]
    assert "(n=1 of 2)" in tier  # svd-global: seed 1 not run
    assert "| not applicable | svd |" not in tier  # svd still has seed 1
    pivot = md.split("**Method × budget**")[1].split("###")[0]
    assert "svd-global" in pivot
    csv = pd.read_csv(out / "results.csv")
    assert set(csv.state) == {"ok", "failed", "not_applicable"}


def test_method_without_any_result_keeps_its_rows(tmp_path):
    _, results = write_synthetic(tmp_path, seeds=[0], fail_one=False)
    manifest = json.loads((results / "manifest.json").read_text())
    for c in manifest["cells"]:
        if c["method"] == XSS_METHOD:
            (results / "cells" / f"{c['cell_id']}.json").unlink()
    out = tmp_path / "report"
    build_report(results, out)
    md = (out / "README.md").read_text()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"no result for method {escaped}" in md
    tier = md.split("### MACs ≤ 0.5× dense")[1].split("###")[0]
    assert f"| not run | {escaped} | – |" in tier
    assert f"| {escaped} | not run | not run | not run |" in md  # pivot row
    scores = md.split("### Scores over the whole curve")[1].split("\n\n")[1]
    assert f"| {escaped} | 0 of 3 | incomplete |" in scores


def test_paired_speedup_ledger_and_breakdown_are_shown(tmp_path):
    _, results = write_synthetic(tmp_path, seeds=[0], fail_one=False)
    for path in (results / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        steps = 900 if rec["method"] == "svd-global" else 1000
        rec["ledger"] = {"phases": [{"phase": "pretrain", "epochs": 1, "steps": steps}],
                         "total_steps": steps, "budget_steps": 1000, "violation": None}
        if rec["method"] == "svd" and rec["target"] == {"macs": 0.5}:
            rec["metrics"]["latency_paired"] = {"cpu": {"b1": {
                "model": {"p50_ms": 0.3}, "reference": {"p50_ms": 0.55},
                "speedup": {"median": 1.84, "ci_low": 1.71, "ci_high": 1.97, "rounds": 20,
                            "noisy": True}}}}
            rec["metrics"]["latency_breakdown"] = {
                "model": {"matmul_conv": 0.2, "norm": 0.05, "activation": 0.02,
                          "reshape": 0.01, "other": 0.02, "total_ms": 0.3},
                "reference": {"matmul_conv": 0.45, "norm": 0.05, "activation": 0.02,
                              "reshape": 0.01, "other": 0.02, "total_ms": 0.55}}
        path.write_text(json.dumps(rec))
    out = tmp_path / "report"
    build_report(results, out)
    md = (out / "README.md").read_text()
    tier = md.split("### MACs ≤ 0.5× dense")[1].split("###")[0]
    svd = next(line for line in tier.splitlines() if "| svd |" in line)
    assert "1.84× \\[1.71, 1.97\\] noisy" in svd
    assert "| 1,000 |" in svd and "900 ⚠" in tier  # svd-global's steps differ from its peers
    html = (out / "index.html").read_text()
    assert 'class="bd-matmul_conv" style="width:81.8%"' in html  # reference 0.45 / 0.55
    assert 'class="bd-matmul_conv" style="width:36.4%"' in html  # model 0.2 / 0.55
    csv = pd.read_csv(out / "results.csv")
    row = csv[csv.speedup_b1.notna()].iloc[0]
    assert (row.speedup_b1, row.speedup_b1_lo, row.speedup_b1_hi) == (1.84, 1.71, 1.97)


def test_method_colours_are_the_same_in_two_reports(tmp_path):
    """Colour and marker depend on the method label alone, not on what else a report holds."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, a = write_synthetic(tmp_path / "a", seeds=[0], fail_one=False)
    _, b = write_synthetic(tmp_path / "b", seeds=[0, 1], fail_one=False, wide=True)
    for c in json.loads((b / "manifest.json").read_text())["cells"]:
        if c["method"] == "svd":  # report b lacks svd entirely
            (b / "cells" / f"{c['cell_id']}.json").unlink()
    build_report(a, tmp_path / "ra")
    build_report(b, tmp_path / "rb")

    def swatches(page: Path) -> dict[str, str]:
        html = page.read_text()
        found = re.findall(r'<td class="method"><span class="sw" style="background:(#[0-9a-f]{6})">'
                           r"</span>([^<]+)</td>", html)
        return dict((m, c) for c, m in found)

    ca, cb = swatches(tmp_path / "ra" / "index.html"), swatches(tmp_path / "rb" / "index.html")
    assert ca["svd-global"] == cb["svd-global"] and len(set(ca.values())) == len(ca)
    assert method_style("svd-global") == method_style("svd-global")
    assert method_style("my-plugin") == method_style("my-plugin")
    assert method_style("svd")[0] != method_style("svd-accel")[0]


def test_plots_are_high_resolution(tmp_path):
    from matplotlib import image as mpimg

    _, results = write_synthetic(tmp_path, seeds=[0], fail_one=False)
    out = tmp_path / "report"
    build_report(results, out)
    img = mpimg.imread(out / "acc-vs-macs-mlp-digits.png")
    assert DPI >= 200 and img.shape[1] >= 6.4 * DPI * 0.9  # figure width at 2x


def test_site_ranking_marks_a_method_that_covers_fewer_suites(tmp_path):
    """Two suites; svd-global has no result in the second: it gets no mean rank (marked
    incomplete with its coverage) and the complete methods are ranked without it."""
    from bench.report import publish_site

    for name, drop in (("one", None), ("two", "svd-global")):
        (tmp_path / name).mkdir()
        _, results = write_synthetic(tmp_path / name, seeds=[0], fail_one=False)
        if drop:
            for c in json.loads((results / "manifest.json").read_text())["cells"]:
                if c["method"] == drop:
                    (results / "cells" / f"{c['cell_id']}.json").unlink()
        build_report(results, tmp_path / "reports" / name)
    index = publish_site(tmp_path / "reports", include_examples=True).read_text()
    found = re.findall(r"<tr[^>]*><td>([^<]+)</td><td class=\"num\">([^<]+)</td>"
                       r"(?:<td class=\"num\">[^<]*</td>){2}<td class=\"num\">([^<]+)</td>", index)
    rows = {m: (coverage, rank) for m, coverage, rank in found}
    assert rows["svd-global"] == ("1 of 2", "incomplete")
    assert rows["svd"] == ("2 of 2", "1.00")  # first among the complete methods everywhere
    assert 'class="st-not-run"><td>svd-global' in index
    assert publish_site(tmp_path / "reports").read_text().count("left out: one, two") == 1
