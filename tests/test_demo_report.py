"""The demo report's figures from ensemble() results: the gaps, which validation figure is nearer the test score,
and the goals (ensemble >= 1.10 x the best single model on validation and test; |validation - test| <= 0.05)."""
import pytest

from pipeline.experiments.demo import goals, scores
from pipeline.retrieval.metrics import map_at_k


def test_class_balanced_map_weights_each_class_equally():
    preds = [["a"], ["a"], ["a"], ["x", "b"]]  # three easy queries of a, one query of b found second
    truth = ["a", "a", "a", "b"]
    assert map_at_k(preds, truth) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert map_at_k(preds, truth, balanced=True) == pytest.approx((1 + 0.5) / 2)


def test_scores_and_goals_by_hand():
    single = [scores({"val_map5": 0.50, "val_map5_balanced": 0.40, "test_map5": 0.38}),
              scores({"val_map5": 0.40, "val_map5_balanced": 0.35, "test_map5": 0.30})]
    assert single[0]["test_minus_val"] == pytest.approx(-0.12)
    assert single[0]["test_minus_val_balanced"] == pytest.approx(-0.02)
    assert single[0]["nearer_test"] == "class-balanced"
    report = {"models": single, "ensemble": scores({"val_map5": 0.56, "val_map5_balanced": 0.50, "test_map5": 0.52})}
    g = goals(report)
    assert g["ensemble_over_best_val"] == pytest.approx(0.56 / 0.50)
    assert g["ensemble_over_best_test"] == pytest.approx(0.52 / 0.38)
    assert g["abs_val_test_gap"] == pytest.approx(0.04)
    assert g["met"] == {"val_gain_1.10": True, "test_gain_1.10": True, "gap_0.05": True,
                        "model_gap_0.06": False}  # the models' gaps: 0.12 and 0.10
    report["ensemble"] = scores({"val_map5": 0.54, "val_map5_balanced": 0.5, "test_map5": 0.40})
    assert goals(report)["met"] == {"val_gain_1.10": False, "test_gain_1.10": False, "gap_0.05": False,
                                    "model_gap_0.06": False}
    assert report["ensemble"]["nearer_test"] == "class-balanced"
