"""Submission writing/validation, truth files, and the score / validate stages."""
import random
import types

import pytest

from pipeline.core.errors import UserError
from pipeline.retrieval.submission import read_truth, score_submission, validate_submission, write_submission

from conftest import assert_one_line_error, cli

CLASSES = [str(c) for c in range(100, 110)]
IDS = ["t3.jpg", "t1.jpg", "t2.jpg"]  # sample-submission order (not sorted)


def _write(path, text):
    path.write_text(text)
    return path


def _leaves_nothing(folder):
    return sorted(p.name for p in folder.iterdir()) == []


def test_round_trip_in_expected_order(tmp_path):
    out = tmp_path / "sub" / "s.csv"
    preds = {"t1.jpg": ["101", "102", "103", "104", "105"], "t2.jpg": ["109", "108", "107", "106", "105"],
             "t3.jpg": ["100", "101", "102", "103", "104"]}
    ids = sorted(preds)
    rows = write_submission(out, ids, [preds[i] for i in ids], expected_ids=IDS, known_classes=CLASSES)
    assert out.read_text() == ("image_id,hotel_id\nt3.jpg,100 101 102 103 104\nt1.jpg,101 102 103 104 105\n"
                               "t2.jpg,109 108 107 106 105\n")
    assert rows == validate_submission(out, IDS, CLASSES) == [(i, preds[i]) for i in IDS]
    assert [p.name for p in out.parent.iterdir()] == ["s.csv"]  # no temp file left


def test_write_without_expected_ids_keeps_given_order(tmp_path):
    out = tmp_path / "s.csv"
    write_submission(out, ["b", "a"], [[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], id_column="id", label_column="label")
    assert out.read_text() == "id,label\nb,1 2 3 4 5\na,5 4 3 2 1\n"


GOOD = [["100", "101", "102", "103", "104"]] * 3


@pytest.mark.parametrize("ids,preds,needles", [
    (IDS, [GOOD[0], GOOD[1], ["100", "101", "102", "103"]], ["row 4", "t2.jpg", "4 hotel_id"]),
    (IDS, [GOOD[0], ["100", "101", "100", "103", "104"], GOOD[2]], ["row 3", "t1.jpg", "'100' repeated"]),
    (IDS, [["100", "101", "102", "103", "999"], GOOD[1], GOOD[2]], ["row 2", "t3.jpg", "unknown", "'999'"]),
    (IDS[:2], GOOD[:2], ["1 expected image id", "t2.jpg"]),
    (IDS + ["x.jpg"], GOOD + [GOOD[0]], ["not in the expected", "x.jpg"]),
    (["t3.jpg", "t3.jpg", "t1.jpg"], GOOD, ["t3.jpg", "twice"]),
    (IDS, [GOOD[0], GOOD[1], ["100 101", "102", "103", "104", "105"]], ["row 4", "6 hotel_id"]),
])
def test_write_rejects_and_leaves_no_file(tmp_path, ids, preds, needles):
    out = tmp_path / "s.csv"
    with pytest.raises(UserError) as e:
        write_submission(out, ids, preds, expected_ids=IDS, known_classes=CLASSES)
    for n in needles:
        assert n in str(e.value)
    assert str(out) in str(e.value) and ".tmp" not in str(e.value)
    assert _leaves_nothing(tmp_path)


def test_write_does_not_replace_a_good_file_with_a_bad_one(tmp_path):
    out = tmp_path / "s.csv"
    write_submission(out, IDS, GOOD, expected_ids=IDS, known_classes=CLASSES)
    before = out.read_text()
    with pytest.raises(UserError):
        write_submission(out, IDS, [GOOD[0], GOOD[1], ["1", "2", "3", "4", "5"]], expected_ids=IDS,
                         known_classes=CLASSES)
    assert out.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["s.csv"]


HEADER = "image_id,hotel_id\n"
ROW = "100 101 102 103 104"


@pytest.mark.parametrize("text,needles", [
    ("id,hotel_id\n" + f"t3.jpg,{ROW}\n", ["header is id,hotel_id", "expected image_id,hotel_id"]),
    ("", ["header is empty"]),
    (HEADER + f"t3.jpg,{ROW}\nt1.jpg,{ROW}\n", ["1 expected image id(s) missing", "'t2.jpg'"]),
    (HEADER + f"t3.jpg,{ROW}\nt1.jpg,{ROW}\nt2.jpg,{ROW}\nzz.jpg,{ROW}\n", ["row 5", "zz.jpg", "extra"]),
    (HEADER + f"t3.jpg,{ROW}\nt1.jpg,{ROW}\nt3.jpg,{ROW}\n", ["row 4", "t3.jpg", "duplicate", "row 2"]),
    (HEADER + f"t3.jpg,{ROW}\nt1.jpg,100 101\nt2.jpg,{ROW}\n", ["row 3", "t1.jpg", "2 hotel_id"]),
    (HEADER + f"t3.jpg,{ROW} 105\n", ["row 2", "6 hotel_id"]),
    (HEADER + f"t3.jpg,{ROW}\nt1.jpg,{ROW}\nt2.jpg,100 101 102 101 104\n", ["row 4", "t2.jpg", "'101' repeated"]),
    (HEADER + f"t3.jpg,{ROW}\nt1.jpg,100 101 102 103 7\n", ["row 3", "t1.jpg", "unknown hotel_id '7'"]),
    (HEADER + f"t3.jpg,{ROW},extra\n", ["row 2", "3 cells"]),
])
def test_validate_rejections(tmp_path, text, needles):
    path = _write(tmp_path / "s.csv", text)
    with pytest.raises(UserError) as e:
        validate_submission(path, IDS, CLASSES)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_validate_missing_file_and_fewer_classes_than_five(tmp_path):
    with pytest.raises(UserError, match="not found"):
        validate_submission(tmp_path / "nope.csv", IDS, CLASSES)
    path = _write(tmp_path / "s.csv", HEADER + "a,1 2\n")
    assert validate_submission(path, ["a"], ["1", "2"]) == [("a", ["1", "2"])]


def test_read_truth(tmp_path):
    assert read_truth(_write(tmp_path / "t.csv", "image_id,hotel_id\na,1\nb,2\n")) == {"a": "1", "b": "2"}
    with pytest.raises(UserError, match="missing column.*hotel_id"):
        read_truth(_write(tmp_path / "t.csv", "image_id,label\na,1\n"))
    with pytest.raises(UserError, match="row 3: duplicate image id 'a'"):
        read_truth(_write(tmp_path / "t.csv", "image_id,hotel_id\na,1\na,2\n"))


def test_score_stage(tmp_path):
    truth = _write(tmp_path / "truth.csv", "image_id,hotel_id\nt1.jpg,101\nt2.jpg,105\nt3.jpg,1\n")
    sub = _write(tmp_path / "sub.csv", HEADER + "t3.jpg,100 100 101\nt1.jpg,101 102 103 104 105 106\n"
                 "t2.jpg,100 101 102 103 105\n")
    proc = cli("score", sub, "--truth", truth)
    assert proc.returncode == 0, proc.stderr
    assert "MAP@5: 0.40000 (3 rows" in proc.stdout  # (0 + 1 + 1/5) / 3
    assert proc.stderr == ("warning: 1 row repeats a label, 1 row has more than 5 labels, 1 row has fewer than 5 "
                           "labels; ./run.sh validate would reject this file (Kaggle scores it: a label counts once, "
                           "labels past the 5th are ignored)\n")

    short = _write(tmp_path / "short.csv", HEADER + "t3.jpg,100\nt1.jpg,101\n")
    assert_one_line_error(cli("score", short, "--truth", truth), "short.csv", "missing", "t2.jpg")
    extra = _write(tmp_path / "extra.csv", sub.read_text() + "t9.jpg,100\n")
    assert_one_line_error(cli("score", extra, "--truth", truth), "row 5", "t9.jpg")
    assert_one_line_error(cli("score", tmp_path / "none.csv", "--truth", truth), "none.csv", "not found")


@pytest.mark.parametrize("row,expected", [("A B C D E", 1.0), ("A A A A A", 1.0), ("A B A C A", 1.0),
                                          ("B A A", 0.5), ("B B A", 1 / 3), ("B C D E F A", 0.0), ("", 0.0)])
def test_score_follows_kaggles_rule(tmp_path, row, expected):
    """SPEC 6: once the correct label is scored, its repeats are skipped; labels past the 5th are ignored."""
    truth = _write(tmp_path / "t.csv", "image,whale\nq,A\n")
    sub = _write(tmp_path / "s.csv", f"image,whale\nq,{row}\n")
    score, rows, warning = score_submission(sub, truth)
    assert (score, rows) == (pytest.approx(expected), 1)
    assert (warning is None) == (row == "A B C D E")


def _kaggle_apk(actual, predicted, k=5):
    """Kaggle's average precision at k (the ml_metrics apk its MAP@K pages cite), for one true label."""
    predicted = predicted[:k]
    score, hits = 0.0, 0
    for i, p in enumerate(predicted):
        if p == actual and p not in predicted[:i]:
            hits += 1
            score += hits / (i + 1)
    return score  # / min(len(actual), k) = 1


def test_score_equals_an_independent_kaggle_apk_on_random_rows(tmp_path):
    rng = random.Random(7)
    labels = [f"w{i}" for i in range(6)] + ["unknown", "new_individual"]
    truth, rows = {}, {}
    for n in range(300):
        truth[f"img{n}.jpg"] = rng.choice(labels[:6])
        rows[f"img{n}.jpg"] = [rng.choice(labels) for _ in range(rng.choice([0, 1, 3, 5, 5, 6, 9]))]
    ids = list(truth)
    rng.shuffle(ids)  # the submission's row order is not the truth's
    truth_path = _write(tmp_path / "t.csv", "image,individual_id\n" + "".join(f"{i},{w}\n" for i, w in truth.items()))
    sub = _write(tmp_path / "s.csv", "image,predictions\n" + "".join(f"{i},{' '.join(rows[i])}\n" for i in ids))
    score, n_rows, warning = score_submission(sub, truth_path, label_column="individual_id")
    assert n_rows == 300
    assert score == pytest.approx(sum(_kaggle_apk(truth[i], rows[i]) for i in ids) / 300, abs=1e-12)
    repeat = sum(len(set(r)) < len(r) for r in rows.values())
    more, fewer = sum(len(r) > 5 for r in rows.values()), sum(len(r) < 5 for r in rows.values())
    assert min(repeat, more, fewer) > 0
    assert warning.startswith(f"{repeat} rows repeat a label, {more} rows have more than 5 labels, {fewer} rows "
                              "have fewer than 5 labels; ./run.sh validate would reject this file")
    with pytest.raises(UserError, match=r"row \d+ \(image id 'img\d+\.jpg'\): .*(repeated|expected 5)"):
        validate_submission(sub, ids, labels, "image", "predictions")  # validate stays strict


def test_score_columns(tmp_path):
    sub = _write(tmp_path / "s.csv", "image,predictions\na.jpg,w1 w2\n")
    other = _write(tmp_path / "t.csv", "image,individual_id\na.jpg,w2\n")
    with pytest.raises(UserError) as e:
        score_submission(sub, other)
    assert str(e.value) == (f"{other}: missing column(s) predictions (has: image, individual_id); the submission's "
                            "header is image,predictions: name the truth file's columns with --id-column / "
                            "--label-column")
    assert score_submission(sub, other, label_column="individual_id")[0] == 0.5
    same = _write(tmp_path / "same.csv", "image,predictions\na.jpg,w2\n")
    assert score_submission(sub, same)[0] == 0.5
    for header in ("image", "image,image", "image,predictions,x"):
        bad = _write(tmp_path / "bad.csv", f"{header}\na.jpg,w2\n")
        with pytest.raises(UserError, match=f"header is {header}, expected two column names"):
            score_submission(bad, same)
    dup = _write(tmp_path / "dup.csv", "image,predictions\na.jpg,w2\na.jpg,w2\n")
    with pytest.raises(UserError, match="row 3 .*duplicate image id"):
        score_submission(dup, same)


def test_validate_stage_with_stubbed_dataset(tmp_path, monkeypatch, capsys):
    import pipeline.data.layouts as layouts
    from pipeline.cli import main

    ds = types.SimpleNamespace(test_ids=IDS, classes=CLASSES, id_column="image_id", label_column="hotel_id")
    monkeypatch.setattr(layouts, "load_dataset", lambda data_dir, cfg=None: ds)
    good = _write(tmp_path / "good.csv", HEADER + "".join(f"{i},{ROW}\n" for i in IDS))
    assert main(["validate", str(good), "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "OK: 3 rows"
    bad = _write(tmp_path / "bad.csv", HEADER + f"t3.jpg,{ROW}\n")
    assert main(["validate", str(bad), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "2 expected image id(s) missing" in err


def test_validate_stage_on_a_hotelid_folder(tmp_path):
    data = tmp_path / "data"
    for hotel in ("11", "12", "13", "14", "15", "16"):
        (data / "train_images" / hotel).mkdir(parents=True)
        (data / "train_images" / hotel / "a.jpg").write_bytes(b"")  # listed, never decoded, by validate
    (data / "test_images").mkdir()
    for i in ("q1.jpg", "q2.jpg"):
        (data / "test_images" / i).write_bytes(b"")
    _write(data / "sample_submission.csv", "image_id,hotel_id\nq2.jpg,11 12 13 14 15\nq1.jpg,11 12 13 14 15\n")
    sub = _write(tmp_path / "s.csv", HEADER + "q2.jpg,16 15 14 13 12\nq1.jpg,11 12 13 14 15\n")
    proc = cli("validate", sub, "--data", data)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK: 2 rows", proc.stdout + proc.stderr
    bad = _write(tmp_path / "bad.csv", HEADER + "q2.jpg,16 15 14 13 12\nq1.jpg,11 12 13 14 99\n")
    assert_one_line_error(cli("validate", bad, "--data", data), "row 3", "q1.jpg", "unknown hotel_id '99'")
