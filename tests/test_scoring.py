"""The inference-trick options of `ensemble` and `evaluate` (pipeline/inference/tricks.py's trick table) on two
tiny trained runs: the flags reach the right cached embeddings and the ranking, --ablate writes its table, bad flags
are one-line errors; and every entry of the table on its own."""
import csv
import json
import re

import numpy as np
import pytest

from conftest import assert_one_line_error, cli, tiny_overrides


def _ov(trained):
    return tiny_overrides(*trained, "epochs=1")


def _cfgs(trained, names):
    from pipeline.config import load_config

    return [load_config(str(trained[1] / f"{n}.yaml"), _ov(trained)) for n in names]


def _reference_val_map5(trained, names, flip, tricks):
    """Independently: the flip-TTA embeddings read from the run folders (files named as retrieval/embeddings.py
    documents), the validation gallery built here, reranking.rank_with_tricks, then Kaggle MAP@5."""
    from pipeline.data.layouts import load_dataset
    from pipeline.inference.reranking import rank_with_tricks
    from pipeline.retrieval.embeddings import load_split
    from pipeline.retrieval.metrics import map_at_k
    from pipeline.retrieval.rank import encode

    cfgs = _cfgs(trained, names)
    sfx = ".flip" if flip else ""
    vals = [load_split(trained[1] / n / "fold0" / "embeddings", "val" + sfx) for n in names]
    gals = [load_split(trained[1] / n / "fold0" / "embeddings", "gallery" + sfx) for n in names]
    keep = np.array([i not in set(vals[0].ids) for i in gals[0].ids])
    classes = load_dataset(cfgs[0]["data"], cfgs[0]).classes
    labels = [lab for lab, k in zip(gals[0].labels, keep) if k]
    codes, _ = rank_with_tricks([np.asarray(v.array) for v in vals], [np.asarray(g.array)[keep] for g in gals],
                       encode(labels, classes), k=5, **tricks)
    return map_at_k([[classes[c] for c in row if c >= 0] for row in codes], vals[0].labels, k=5)


def test_ensemble_tricks_reach_embeddings_and_ranking(trained):
    names = [str(trained[1] / f"{n}.yaml") for n in ("a", "b")]
    p = cli("ensemble", *names, "--flip", "--dba", "3,2", "--qe", "2", "--weights", "1,2", "--out", "tricks",
            "--overrides", *_ov(trained))
    assert p.returncode == 0, p.stderr
    assert "inference tricks: flip=True" in p.stdout
    report = json.loads((trained[1] / "ensembles" / "tricks" / "scores.json").read_text())
    assert report["tricks"]["dba"] == [3, 2.0] and report["tricks"]["weights"] == [1.0, 2.0]
    want = _reference_val_map5(trained, ["a", "b"], True, dict(weights=[1.0, 2.0], dba=(3, 2.0), qe=(2, 3.0)))
    assert report["ensemble"]["val_map5"] == pytest.approx(want, abs=1e-12)
    alone = _reference_val_map5(trained, ["a"], True, dict(dba=(3, 2.0), qe=(2, 3.0)))
    assert report["models"]["a"] == pytest.approx(alone, abs=1e-12)
    # no flags: exactly the plain engine's score on the default embeddings
    p = cli("ensemble", *names, "--out", "plain", "--overrides", *_ov(trained))
    assert p.returncode == 0, p.stderr
    plain = json.loads((trained[1] / "ensembles" / "plain" / "scores.json").read_text())
    assert plain["ensemble"]["val_map5"] == pytest.approx(_reference_val_map5(trained, ["a", "b"], False, {}),
                                                           abs=1e-12)


def test_evaluate_ablate_writes_one_row_per_trick(trained):
    from pipeline.inference.tricks import ABLATIONS

    names = [str(trained[1] / f"{n}.yaml") for n in ("a", "b")]
    p = cli("evaluate", *names, "--ablate", "--out", "abl", *_ov(trained))
    assert p.returncode == 0, p.stderr
    out = trained[1] / "evaluate" / "abl"
    rows = list(csv.DictReader(open(out / "ablate.csv")))
    assert [r["trick"].split(" ")[0] for r in rows] == ["baseline"] + [n.split(" ")[0] for n, _ in ABLATIONS]
    assert all((out / f).stat().st_size > 0 for f in ("ablate.md", "ablate.json", "ablate.png"))
    by = {r["trick"]: float(r["val_map5"]) for r in rows}
    assert by["baseline"] == pytest.approx(_reference_val_map5(trained, ["a", "b"], False, {}), abs=1e-12)
    assert by["flip TTA"] == pytest.approx(_reference_val_map5(trained, ["a", "b"], True, {}), abs=1e-12)
    agg = _reference_val_map5(trained, ["a", "b"], False, dict(agg="sum", agg_k=3))
    assert by["class score = sum of top-3"] == pytest.approx(agg, abs=1e-12)
    for r in rows:
        assert float(r["delta"]) == pytest.approx(float(r["val_map5"]) - by["baseline"], abs=1e-12)


def test_evaluate_with_embedding_trick_uses_its_embeddings(trained):
    names = [str(trained[1] / f"{n}.yaml") for n in ("a",)]
    p = cli("evaluate", *names, "--flip", "--metrics", "map@5", "--out", "flip", *_ov(trained))
    assert p.returncode == 0, p.stderr
    got = json.loads((trained[1] / "evaluate" / "flip" / "metrics.json").read_text())["rows"][0]["map@5"]
    assert got == pytest.approx(_reference_val_map5(trained, ["a"], True, {}), abs=1e-12)


@pytest.mark.parametrize("flags, needle", [
    (["--qe", "x"], "--qe 'x'"),
    (["--dba", "5,-1"], "--dba '5,-1'"),
    (["--weights", "1,2"], "--weights '1,2'"),
    (["--whiten"], "--whiten needs --pca"),
    (["--agg-k", "0"], "--agg-k 0"),
    (["--ablate", "--leave-one-out"], "--ablate"),
    (["--leave-one-out", "--dba", "5"], "--leave-one-out"),
])
def test_bad_trick_flags_are_one_line_errors(trained, flags, needle):
    p = cli("evaluate", str(trained[1] / "a.yaml"), *flags, *_ov(trained))
    assert_one_line_error(p, needle)


def test_ensemble_report_takes_the_tricks(trained):
    names = [str(trained[1] / f"{n}.yaml") for n in ("a", "b")]
    p = cli("ensemble-report", *names, "--dba", "3,2", "--flip", "--out", "rep_tricks", *_ov(trained))
    assert p.returncode == 0, p.stderr
    rows = json.loads((trained[1] / "ensembles" / "rep_tricks" / "report.json").read_text())["rows"]
    assert rows[-1]["val_map5"] == pytest.approx(
        _reference_val_map5(trained, ["a", "b"], True, dict(dba=(3, 2.0))), abs=1e-12)
    assert rows[0]["val_map5"] == pytest.approx(_reference_val_map5(trained, ["a"], True, dict(dba=(3, 2.0))),
                                                abs=1e-12)


def _trick_parser():
    import argparse

    from pipeline.inference.tricks import add_trick_arguments

    p = argparse.ArgumentParser()
    add_trick_arguments(p)
    return p


@pytest.mark.parametrize("name", sorted(__import__("pipeline.inference.tricks", fromlist=["TRICKS"]).TRICKS))
def test_trick_table_entry(name):
    """Every TRICKS entry: its flags parse to its defaults, its ablation rows change only its own keys, its values
    survive JSON, and it acts at a known stage."""
    from pipeline.inference.tricks import DEFAULTS, TRICKS, describe, tricks_from_args, tricks_from_json

    trick = TRICKS[name]
    assert trick.stage in ("embedding", "ranking")
    parsed = tricks_from_args(_trick_parser().parse_args([]), 2)
    assert parsed == DEFAULTS and {k: parsed[k] for k in trick.defaults} == trick.defaults
    for label, values in trick.ablations:
        assert set(values) <= set(trick.defaults) and values != {k: trick.defaults[k] for k in values}, label
        assert describe(dict(DEFAULTS, **values)) != "none"
    saved = json.loads(json.dumps(dict(DEFAULTS, **{k: v for _, vals in trick.ablations for k, v in vals.items()})))
    assert tricks_from_json(saved) == dict(DEFAULTS, **{k: v for _, vals in trick.ablations for k, v in vals.items()})


@pytest.mark.parametrize("argv, needle", [(["--qe", "x"], "--qe 'x'"), (["--dba", "-1"], "--dba '-1'"),
                                          (["--agg-k", "0"], "--agg-k 0"), (["--pca", "-2"], "--pca -2"),
                                          (["--whiten"], "--whiten needs --pca"),
                                          (["--weights", "1"], "--weights '1'")])
def test_trick_table_checks_flags(argv, needle):
    from pipeline.core.errors import UserError
    from pipeline.inference.tricks import tricks_from_args

    with pytest.raises(UserError, match=re.escape(needle)):
        tricks_from_args(_trick_parser().parse_args(argv), 2)
