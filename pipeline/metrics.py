"""Kaggle MAP@k with one true label per query (Hotel-ID's metric): 1/rank of the first correct label, else 0."""


def average_precision_at_k(pred_row, true_label, k=5):
    """1/rank of true_label within the first k predictions, 0 if absent. A label repeated in the row counts only
    at its first position (later duplicates earn nothing but still use up a position)."""
    # the first match is the one that counts, so duplicates need no special case
    for i, p in enumerate(list(pred_row)[:k]):
        if p == true_label:
            return 1.0 / (i + 1)
    return 0.0


def map_at_k(predictions, truth, k=5):
    """Mean of average_precision_at_k over queries. predictions: per-query label sequences (best first);
    truth: one label per query. Labels may be str or int, but compare as given ("1" != 1)."""
    predictions, truth = list(predictions), list(truth)
    if len(predictions) != len(truth):
        raise ValueError(f"map_at_k: {len(predictions)} prediction rows for {len(truth)} true labels")
    if not truth:
        return 0.0
    return sum(average_precision_at_k(p, t, k) for p, t in zip(predictions, truth)) / len(truth)
