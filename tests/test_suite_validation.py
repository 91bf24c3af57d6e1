"""Bad suites fail before any compute, naming file, field, value and the options."""

from __future__ import annotations

import pytest

from bench.cli import main


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s["methods"].append({"name": "svdd"}),
         ["methods[2].name", "svdd", "Did you mean: svd", "Available:"]),
        (lambda s: s["models"].__setitem__(0, {"name": "resnet1800"}),
         ["models[0].name", "resnet1800", "Did you mean"]),
        (lambda s: s["datasets"].__setitem__(0, {"name": "digitz"}),
         ["datasets[0].name", "digitz", "Did you mean: digits"]),
        (lambda s: s.__setitem__("epochz", 3),
         ["epochz", "Unknown field", "Available:"]),
        (lambda s: s["train"].__setitem__("optimiser", "sgd"),
         ["train.optimiser", "Did you mean: optimizer"]),
        (lambda s: s["methods"][1].__setitem__("params", {"rank_selection": "best"}),
         ["methods[1]", "rank_selection", "best"]),
        (lambda s: s.__setitem__("targets", [{"flops": 0.5}]),
         ["targets[0]", "flops", "macs, params"]),
    ],
)
def test_validate_rejects_bad_suites(tiny_suite, write_suite, capsys, mutate, expected):
    mutate(tiny_suite)
    path = write_suite(tiny_suite)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code != 0
    assert str(path) in err
    for text in expected:
        assert text in err, (text, err)


def test_validate_accepts_the_shipped_suites(capsys):
    from bench.suite import SUITES_DIR

    for path in sorted(SUITES_DIR.glob("*.yaml")):
        assert main(["validate", str(path)]) == 0, path
    assert "valid suite" in capsys.readouterr().out


def test_unknown_suite_name_suggests(capsys):
    assert main(["validate", "quik"]) != 0
    assert "Did you mean: quick" in capsys.readouterr().err
