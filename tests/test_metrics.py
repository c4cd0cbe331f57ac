"""MAP@5 on hand-computed cases."""
import pytest

from pipeline.retrieval.metrics import average_precision_at_k, map_at_k


@pytest.mark.parametrize("row,truth,want", [
    (["a", "b", "c", "d", "e"], "a", 1.0),
    (["b", "c", "a", "d", "e"], "a", 1 / 3),
    (["b", "c", "d", "e", "f"], "a", 0.0),
    (["b", "c", "d", "e", "f", "a"], "a", 0.0),     # beyond k
    (["b", "b", "a", "c", "d"], "a", 1 / 3),        # a duplicate before the answer still occupies a position
    (["a", "a", "b", "c", "d"], "a", 1.0),          # a repeated correct label counts once
    (["b", "a", "a", "a", "a"], "a", 0.5),
    ([], "a", 0.0),
    ([7, 3, 12], 12, 1 / 3),                        # int labels
])
def test_average_precision(row, truth, want):
    assert average_precision_at_k(row, truth, 5) == pytest.approx(want)


def test_map_is_the_mean_over_queries():
    preds = [["1", "2", "3", "4", "5"], ["9", "8", "7", "6", "5"], ["3", "3", "1", "2", "4"], ["5", "6"]]
    truth = ["1", "7", "1", "9"]
    assert map_at_k(preds, truth, k=5) == pytest.approx((1 + 1 / 3 + 1 / 3 + 0) / 4)
    assert map_at_k([[1, 2], [2, 1]], [2, 2]) == pytest.approx(0.75)
    assert map_at_k([["1"]], [1]) == 0.0  # str vs int labels are different labels


def test_k_limits_and_edge_cases():
    assert map_at_k([["b", "a"]], ["a"], k=1) == 0.0
    assert map_at_k([], []) == 0.0
    with pytest.raises(ValueError):
        map_at_k([["a"]], ["a", "b"])


# Instance-level metrics (seed 001's mAP@k, acc@1, precision@k, recall@k), computed by hand.
def _rel(*rows):
    import numpy as np

    return np.array(rows, bool)


def test_instance_ap_by_hand():
    from pipeline.retrieval.metrics import instance_ap_at_k

    rel = _rel([1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 1])
    m = [2, 3, 0, 1, 10]
    # row 0: (P@1 + P@3) / min(5, 2) = (1 + 2/3) / 2; row 1: P@2 / 3 = (1/2) / 3; row 2: M_q = 0 -> 0;
    # row 3: P@3 / 1 = 1/3; row 4: (1+1+1+1+1) / min(5, 10) = 1
    assert list(instance_ap_at_k(rel, m, 5)) == pytest.approx([5 / 6, 1 / 6, 0, 1 / 3, 1])
    assert list(instance_ap_at_k(rel, m, 1)) == pytest.approx([1, 0, 0, 0, 1])
    assert list(instance_ap_at_k(rel, m, 2)) == pytest.approx([1 / 2, 1 / 4, 0, 0, 1])  # min(2, M_q)


def test_instance_metrics_by_hand():
    from pipeline.retrieval.metrics import instance_metrics, relevance

    rel = relevance([["a", "b", "a"], ["c", "a", "a"], ["b", "b", "b"]], ["a", "a", "c"])
    assert rel.tolist() == [[True, False, True], [False, True, True], [False, False, False]]
    got = instance_metrics(rel, [2, 4, 0], [1, 3])
    assert list(got) == ["mAP@1", "mAP@3", "acc@1", "precision@1", "precision@3", "recall@1", "recall@3"]
    assert got["acc@1"] == pytest.approx(1 / 3) == got["precision@1"] == got["recall@1"] == got["mAP@1"]
    # mAP@3: ((1 + 2/3)/2 + (1/2 + 2/3)/3 + 0) / 3 -- the M_q = 0 query scores 0 and counts
    assert got["mAP@3"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 3) / 3)
    assert got["precision@3"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert got["recall@3"] == pytest.approx(2 / 3)  # any hit in the top 3
    # a gallery shorter than k: precision still divides by k
    assert instance_metrics(relevance([["a"]], ["a"]), [1], [5], ["precision@k"]) == {"precision@5": 0.2}
    assert instance_metrics(relevance([], []), [], [5]) == {"mAP@5": 0.0, "acc@1": 0.0, "precision@5": 0.0,
                                                          "recall@5": 0.0}
