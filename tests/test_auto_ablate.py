"""evaluate --ablate --seeds (mean ± std over the seeds compare trained) and ensemble-report --auto (chosen on half
A of the validation images, confirmed on half B, written as a best.json that kernel --from-report takes), on the
tiny runs. The trick rows are cut to a few ranking-time ones so the tests stay fast; the rows themselves are the
registry's."""
import hashlib
import json
import statistics

import pytest
from test_scoring import brute_predictions, kaggle_map5

from pipeline.config import load_config
from pipeline.experiments import ablate as ablate_module
from pipeline.inference.tricks import ABLATIONS, DEFAULTS

from conftest import cli, tiny_overrides

ROWS = [r for r in ABLATIONS if r[0].startswith(("class score", "database", "kNN 0.5"))]


@pytest.fixture
def few_rows(monkeypatch):
    assert len(ROWS) == 3
    monkeypatch.setattr(ablate_module, "ABLATIONS", ROWS)


def test_ablate_over_seeds_is_the_mean_and_std_of_each_seeds_ablation(tiny_data, tmp_path, few_rows):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "s.yaml").write_text("# seeds test\n")
    ov = tiny_overrides(tiny_data, runs, "epochs=1")
    p = cli("compare", runs / "s.yaml", "--seeds", "2", "--metrics", "map@5", "--zero-shot", "none", *ov)
    assert p.returncode == 0, p.stderr
    cfgs = [load_config(str(runs / "s.yaml"), ov)]
    rows = ablate_module.ablate_seeds(cfgs, dict(DEFAULTS), 2, None, tmp_path / "out", log=lambda *a: None)
    assert [r["trick"] for r in rows] == ["baseline"] + [r[0] for r in ROWS]
    per_seed = [json.loads((tmp_path / "out" / f"seed{s}" / "ablate.json").read_text())["rows"] for s in (1, 2)]
    for i, row in enumerate(rows):
        vals = [seed[i]["val_map5"] for seed in per_seed]
        assert row["val_map5_mean"] == pytest.approx(statistics.mean(vals))
        assert row["val_map5_std"] == pytest.approx(statistics.stdev(vals))
        assert row["delta_mean"] == pytest.approx(statistics.mean(v - s[0]["val_map5"] for v, s in
                                                                  zip(vals, per_seed)))
    assert "±" in (tmp_path / "out" / "ablate.md").read_text()
    # a seed compare has not trained is a one-line error naming the command that trains it
    with pytest.raises(Exception, match="compare s --seeds 3"):
        ablate_module.ablate_seeds(cfgs, dict(DEFAULTS), 3, None, tmp_path / "out3", log=lambda *a: None)


def test_auto_chooses_on_half_a_confirms_on_half_b_and_kernel_takes_it(trained, tmp_path, few_rows, capsys,
                                                                      monkeypatch):
    from pipeline.cli import main
    from pipeline.experiments.subsets import load_best

    tiny, runs = trained
    cfgs = [load_config(str(runs / f"{n}.yaml"), tiny_overrides(tiny, runs, "epochs=1")) for n in "ab"]
    record = ablate_module.auto_choose(cfgs, dict(DEFAULTS), tmp_path / "rep", seed=3, log=lambda *a: None)
    steps = json.loads((tmp_path / "rep" / "auto.json").read_text())["rows"]
    # each kept trick raised half A, the subset chosen again cannot lower it; then the all-models reference row
    kept, chosen = steps[:-1], steps[-2]
    assert all(b["half_a"] > a["half_a"] for a, b in zip(kept[:-2], kept[1:-1]))
    assert kept[-1]["half_a"] >= kept[-2]["half_a"] and steps[-1]["models"] == "a+b"
    assert record["models"] == chosen["models"].split("+")
    # half A / half B recomputed independently: the chosen subset's predictions by the float64 brute force of its
    # cached embeddings with the chosen tricks, the halves by the seeded hash written out (sha1 of "seed|image id",
    # even: half A)
    _, tricks = load_best(tmp_path / "rep", log=lambda *a: None)
    from pipeline.data.layouts import load_dataset

    assert set(tricks) == set(DEFAULTS) and tricks["weights"] is None
    assert {k: v for k, v in tricks.items() if k not in ("agg", "agg_k", "dba", "knn_alpha")} == {
        k: v for k, v in DEFAULTS.items() if k not in ("agg", "agg_k", "dba", "knn_alpha")}  # only ROWS' keys move
    ids, preds, truth = brute_predictions(runs, record["models"], load_dataset(tiny / "data").classes,
                                          agg_k=tricks["agg_k"] if tricks["agg"] == "sum" else 0,
                                          dba=tuple(tricks["dba"]), alpha=tricks["knn_alpha"])
    side = [int(hashlib.sha1(f"3|{i}".encode()).hexdigest(), 16) % 2 == 0 for i in ids]
    assert 0 < sum(side) < len(side)
    a = kaggle_map5([p for p, s in zip(preds, side) if s], [t for t, s in zip(truth, side) if s])
    b = kaggle_map5([p for p, s in zip(preds, side) if not s], [t for t, s in zip(truth, side) if not s])
    assert (chosen["half_a"], chosen["half_b"]) == pytest.approx((a, b), abs=1e-12)
    assert chosen["val_map5"] == pytest.approx(kaggle_map5(preds, truth), abs=1e-12)
    # kernel --from-report packages exactly that choice
    monkeypatch.chdir(tmp_path)
    code = main(["kernel", "auto-kernel", "--from-report", str(tmp_path / "rep"), "--owner", "tester", "--no-verify",
                 "--wheels"])
    assert code == 0, capsys.readouterr().err
    kernel = json.loads((tmp_path / "kernels" / "auto-kernel" / "models" / "kernel.json").read_text())
    assert kernel["models"] == record["models"] and kernel["tricks"]["knn_alpha"] == tricks["knn_alpha"]
