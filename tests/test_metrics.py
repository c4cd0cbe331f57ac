"""MAP@5 on hand-computed cases."""
import pytest

from pipeline.metrics import average_precision_at_k, map_at_k


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
