"""Findings: leaders per budget and the papers' claims decided only outside the intervals."""

from __future__ import annotations

from bench.report.findings import check_claims, leaders, render_findings


def rec(method, top1, target="macs<=0.5", seed=0, speed=None, met=True):
    m = {"top1": top1, "test_n": 1000, "budget": {"met": met}}
    if speed:
        m["latency_paired"] = {"cpu": {"b1": {"speedup": dict(zip(
            ("median", "ci_low", "ci_high"), speed))}}}
    return {"status": "ok", "model": "m", "dataset": "d", "target_label": target,
            "method": method, "method_name": method, "seed": seed, "metrics": m}


def claims(records):
    return {c.key: c for c in check_claims(records)}


def test_claim_supported_only_when_intervals_separate():
    # one seed: Wilson intervals over the test samples decide, and the verdict says so
    far = claims([rec("maestro", 0.90), rec("svd", 0.70), rec("prune-l1", 0.75)])
    assert far["maestro"].verdict == "supported (rests on one seed)"
    close = claims([rec("maestro", 0.801), rec("svd", 0.80)])
    assert close["maestro"].verdict == "cannot decide within the intervals (rests on one seed)"
    below = claims([rec("lorita", 0.5), rec("svd", 0.8)])
    assert below["lorita"].verdict == "contradicted (rests on one seed)"


def test_over_budget_rows_and_missing_methods_do_not_count():
    c = claims([rec("maestro", 0.99, met=False), rec("svd", 0.5)])
    assert c["maestro"].verdict.startswith("cannot decide: no comparable")


def test_accel_claim_needs_equal_accuracy_and_separate_speedups():
    c = claims([rec("svd-accel", 0.80, speed=(1.5, 1.4, 1.6)),
                rec("svd", 0.80, speed=(1.1, 1.0, 1.2))])
    assert c["accel"].verdict == "supported (rests on one seed)"
    c = claims([rec("svd-accel", 0.80, speed=(1.15, 1.0, 1.3)),
                rec("svd", 0.80, speed=(1.1, 1.0, 1.2))])
    assert c["accel"].verdict == "cannot decide within the intervals (rests on one seed)"


def test_leaders_and_markdown():
    rs = [rec("svd", 0.80), rec("funnel", 0.801), rec("prune-l1", 0.5),
          rec("dense", 0.9, target="dense")]
    (line,) = leaders(rs)  # one seed: the single run ranks, no tie within noise
    assert "funnel 80.10%" in line and "svd" not in line and "one seed" in line
    two = rs + [rec("svd", 0.81, seed=1), rec("funnel", 0.80, seed=1),
                rec("prune-l1", 0.51, seed=1)]
    (line,) = leaders(two)  # the paired difference (+1.0, -0.9 pp) includes 0
    assert "funnel" in line and "svd" in line and "tied" in line and "prune-l1" not in line
    assert "one seed" not in line
    md = render_findings(rs)
    assert md.startswith("## Findings") and "Funnel keeps more accuracy" in md


def test_a_wide_row_tied_with_the_leader_says_why_steadier_rows_above_it_are_not():
    """Ties are not transitive: the leader beats a steady row, but not a row below it whose
    seeds spread widely; the line must not read as if that row were second best."""
    rs = [rec("a", v, seed=s) for s, v in enumerate((0.90, 0.90, 0.90))]
    rs += [rec("b", v, seed=s) for s, v in enumerate((0.85, 0.851, 0.849))]
    rs += [rec("c", v, seed=s) for s, v in enumerate((0.80, 0.95, 0.70))]
    (line,) = leaders(rs)
    assert line.startswith("m/d macs<=0.5: a 90.00%, c 81.67% (tied at rank 1")
    assert "b 85" not in line
    assert "c ranks 1 below rows the leader beats" in line


def test_a_row_above_dense_beyond_the_intervals_warns_undertrained():
    rs = [rec("dense", 0.70, target="dense"), rec("svd", 0.90), rec("funnel", 0.705)]
    md = render_findings(rs)
    assert "svd at macs<=0.5" in md and "reference may be undertrained" in md
    assert "funnel at macs" not in md


def test_method_details_show_rank_rule_and_ablation():
    r = rec("svd", 0.8)
    r["method_info"] = {"rank_rule_choice": {"chosen": "global"}}
    a = rec("svd-accel", 0.8)
    a["method_info"] = {"accel_ablation": {"stages": [
        {"stage": "svd", "val_top1": 0.7, "macs_ratio": 0.5},
        {"stage": "+rounding", "val_top1": 0.75, "macs_ratio": 0.49}]}}
    md = render_findings([r, a])
    assert "m svd macs<=0.5: global" in md
    assert "svd 70.00% / 0.500x; +rounding 75.00% / 0.490x" in md
