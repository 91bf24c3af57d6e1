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


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s["methods"].append({"name": "svd", "label": "svd-again"}),
         ["methods[2]", "method 'svd'", "already listed as methods[1]"]),
        (lambda s: s["methods"].append({"name": "svd", "grid": {"rank_selection":
                                                                ["auto", "local"]}}),
         ["methods[2]", "already listed as methods[1]"]),
        (lambda s: s["latency"].__setitem__("batch_sizes", [1, 0]),
         ["latency.batch_sizes", "must be >= 1", "got 0"]),
        (lambda s: s["latency"].__setitem__("batch_sizes", [-4]),
         ["latency.batch_sizes", "got -4"]),
        (lambda s: s["models"].__setitem__(0, {"name": "mlp", "kwargs": {"hiden": [8]}}),
         ["models[0].kwargs", "hiden", "{'hiden': [8]}"]),
        (lambda s: s["models"].append({"name": "resnet10t", "kwargs": {"chanels": [8] * 4}}),
         ["models[1].kwargs", "chanels", "TypeError"]),
        (lambda s: s["models"].append({"name": "vit_tiny_patch16_224", "stem": "cifar"}),
         ["models[1].stem", "patch embedding"]),
    ],
)
def test_validate_rejects_what_a_run_would_hit(tiny_suite, write_suite, capsys, mutate,
                                               expected):
    mutate(tiny_suite)
    path = write_suite(tiny_suite)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "invalid suite" in err
    for text in expected:
        assert text in err, (text, err)


def test_same_method_with_other_params_is_fine(tiny_suite, write_suite, capsys):
    tiny_suite["methods"].append({"name": "svd", "params": {"rank_selection": "global"}})
    assert main(["validate", str(write_suite(tiny_suite))]) == 0


def test_include_overrides_fields_and_keeps_cell_ids(tiny_suite, write_suite, tmp_path):
    from bench.cells import expand
    from bench.suite import load_suite

    base = write_suite(tiny_suite, "base.yaml")
    child = tmp_path / "child.yaml"
    child.write_text("include: base.yaml\ntrain: {epochs: 1}\nseeds: [3]\n")
    suite, _ = load_suite(child)
    assert suite.name == "child" and suite.seeds == [3]
    assert suite.train.epochs == 1 and suite.train.lr == tiny_suite["train"]["lr"]  # merged
    assert [m.name for m in suite.methods] == ["dense", "svd"]
    same = tmp_path / "same.yaml"
    same.write_text("include: base.yaml\nname: tiny\n")
    assert ({c.id for c in expand(load_suite(same)[0])}
            == {c.id for c in expand(load_suite(base)[0])})
    bad = tmp_path / "bad.yaml"
    bad.write_text("include: base.yaml\nlatency: {batch_sizes: [0]}\n")
    with pytest.raises(Exception, match=r"latency.batch_sizes"):
        load_suite(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("include: loop.yaml\n")
    with pytest.raises(Exception, match="include cycle"):
        load_suite(loop)
    missing = tmp_path / "missing.yaml"
    missing.write_text("include: nowhere.yaml\n")
    with pytest.raises(Exception, match="include: Suite file 'nowhere.yaml' does not exist"):
        load_suite(missing)


def test_cifar100_is_cifar_with_another_dataset():
    from bench.suite import load_suite

    c10, _ = load_suite("cifar")
    c100, _ = load_suite("cifar100")
    assert c100.name == "cifar100" and c100.datasets[0].name == "cifar100"
    assert c100.models == c10.models and c100.methods == c10.methods
    assert c100.train == c10.train and c100.seeds == c10.seeds


def test_a_model_may_run_fewer_seeds_and_keeps_its_cell_ids(tiny_suite, write_suite):
    from bench.cells import expand
    from bench.manifest import build_manifest
    from bench.suite import load_suite

    tiny_suite["seeds"] = [0, 1]
    both = {c.id for c in expand(load_suite(write_suite(tiny_suite, "both.yaml"))[0])}
    tiny_suite["models"][0]["seeds"] = [1]
    suite, _ = load_suite(write_suite(tiny_suite, "one.yaml"))
    cells = expand(suite)
    assert {c.seed for c in cells} == {1}
    assert {c.id for c in cells} < both  # the seed-1 cells, ids unchanged
    assert build_manifest(suite).seeds == [1]
    tiny_suite["models"][0]["seeds"] = []
    with pytest.raises(Exception, match=r"models\[0\]\.seeds: List should have at least 1 item"):
        load_suite(write_suite(tiny_suite, "empty.yaml"))
