"""The Pareto marks: a point leaves the front only when a cheaper one beats it beyond
the intervals over seeds (by means with one seed)."""

from bench.report.pareto import front_flags, mark_front
from bench.report.stats import estimate


def entry(cost: float, by_seed: dict[int, float], over_budget: bool = False) -> dict:
    return {"macs_ratio": cost, "by_seed": by_seed, "over_budget": over_budget,
            "est": estimate(list(by_seed.values()))}


def test_a_point_within_seed_noise_of_a_cheaper_one_stays_on_the_front():
    cheap = entry(0.25, {0: 0.50, 1: 0.60, 2: 0.55})
    noisy = entry(0.5, {0: 0.52, 1: 0.50, 2: 0.56})  # lower mean, differences swing sign
    beaten = entry(0.5, {0: 0.40, 1: 0.50, 2: 0.45})  # 10 pp under cheap on every seed
    ref = entry(1.0, {0: 0.70, 1: 0.71, 2: 0.69})
    assert noisy["est"].mean < cheap["est"].mean
    assert mark_front([cheap, noisy, beaten, ref]) == "seeds"
    assert [e["on_front"] for e in (cheap, noisy, beaten, ref)] == [True, True, False, True]


def test_one_seed_falls_back_to_means():
    cheap, dear, best = entry(0.25, {0: 0.55}), entry(0.5, {0: 0.54}), entry(1.0, {0: 0.70})
    flags, basis = front_flags([cheap, dear, best], [0.25, 0.5, 1.0])
    assert basis == "means"
    assert flags == [True, False, True]


def test_over_budget_and_missing_entries_are_off_the_front_and_dominate_nothing():
    over = entry(0.1, {0: 0.9, 1: 0.9, 2: 0.9}, over_budget=True)
    ok = entry(0.25, {0: 0.5, 1: 0.6, 2: 0.55})
    absent = {"macs_ratio": 0.3, "by_seed": {}, "over_budget": False, "est": None}
    mark_front([over, ok, absent])
    assert (over["on_front"], ok["on_front"], absent["on_front"]) == (None, True, None)


def test_an_equal_cost_point_beaten_beyond_the_intervals_leaves_the_front():
    a = entry(0.25, {0: 0.60, 1: 0.62, 2: 0.61})
    b = entry(0.25, {0: 0.50, 1: 0.53, 2: 0.51})
    mark_front([a, b])
    assert (a["on_front"], b["on_front"]) == (True, False)


def test_a_one_seed_row_leaves_the_seeded_pairs_judged_by_their_seeds():
    one_seed = entry(0.5, {0: 0.70})  # dearer, better by mean than everything seeded
    cheap = entry(0.2, {0: 0.50, 1: 0.60, 2: 0.55})
    noisy = entry(0.25, {0: 0.52, 1: 0.50, 2: 0.56})  # within seed noise of cheap
    beaten = entry(0.6, {0: 0.60, 1: 0.61, 2: 0.60})  # under one_seed by mean, dearer
    assert mark_front([one_seed, cheap, noisy, beaten]) == "mixed"
    assert [e["on_front"] for e in (one_seed, cheap, noisy, beaten)] == [True, True, True,
                                                                        False]
