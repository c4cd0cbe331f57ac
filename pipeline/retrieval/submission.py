"""Kaggle submission files (the sample submission's header, e.g. `image_id,hotel_id`, with 5 space-separated
class ids per row): write (a DataFrame), validate, score against truth files. A submission is validated before it
is renamed into place, so a bad one is never left on disk. Submissions are read row by row with the csv module
rather than pandas: an error must name the row and cell count of a malformed line and see every cell as written.

`validate` is strict (exactly 5 distinct known labels per row). `score` scores what Kaggle scores (SPEC 6): a
correct label counts once, at its first position, and labels past the 5th are ignored; the ids and the header
are checked as strictly as Kaggle does at submit time."""
import csv
import io
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.io import atomic_path, read_text


def write_submission(path: str | Path, image_ids: Iterable[str], predictions: Iterable[Sequence[str]], *,
                     expected_ids: Collection[str] | None = None, known_classes: Iterable[str] | None = None,
                     id_column: str = "image_id", label_column: str = "hotel_id") -> list[tuple[str, list[str]]]:
    """predictions[i]: the ranked labels (5, best first) for image_ids[i]. Rows follow expected_ids (the sample
    submission's order) when given, else image_ids. Returns the validated rows."""
    image_ids, predictions = [str(i) for i in image_ids], list(predictions)
    if len(image_ids) != len(predictions):
        raise UserError(f"{path}: {len(image_ids)} image ids but {len(predictions)} prediction rows")
    by_id = {}
    for i, p in zip(image_ids, predictions):
        if i in by_id:
            raise UserError(f"{path}: image id '{i}' predicted twice")
        by_id[i] = " ".join(str(x) for x in p)
    order = [str(i) for i in expected_ids] if expected_ids is not None else image_ids
    missing = [i for i in order if i not in by_id]
    if missing:
        raise UserError(f"{path}: no prediction for {len(missing)} expected image id(s), first '{missing[0]}'; "
                        "embed the full test set")
    wanted = set(order)
    extra = [i for i in image_ids if i not in wanted]
    if extra:
        raise UserError(f"{path}: {len(extra)} predicted image id(s) not in the expected ids, first '{extra[0]}'")
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame({id_column: order, label_column: [by_id[i] for i in order]}).to_csv(tmp, index=False,
                                                                                         lineterminator="\n")
        return _validate(tmp, path, order, known_classes, id_column, label_column, 5)


def validate_submission(path: str | Path, expected_ids: Collection[str], known_classes: Iterable[str] | None,
                        id_column: str = "image_id", label_column: str = "hotel_id",
                        n: int = 5) -> list[tuple[str, list[str]]]:
    """Rows [(image_id, [labels])] in file order; UserError naming the file and row for any problem: missing file,
    wrong header, missing / extra / duplicate ids, a row with other than n labels, a label repeated in a row, a
    label not in known_classes (skipped when known_classes is None)."""
    return _validate(path, path, expected_ids, known_classes, id_column, label_column, n)


def _reader(path, shown):
    """csv rows of a submission file; a missing file or one that is not UTF-8 is a UserError."""
    if not Path(path).is_file():
        raise UserError(f"{shown}: file not found")
    return csv.reader(io.StringIO(read_text(path), newline=""))


def _header(path, shown):
    """The first row of a submission file (its header)."""
    return next(_reader(path, shown), None) or []


def _rows(path, shown, expected_ids, columns):
    """Yields (where, image_id, labels) for each row under the header `columns`, after the checks Kaggle makes as
    well: the header, two cells per row, no duplicate or extra id; after the last row, no expected id missing."""
    reader = _reader(path, shown)
    header = next(reader, None) or []
    if header != list(columns):
        raise UserError(f"{shown}: header is {','.join(header) or 'empty'}, expected {','.join(columns)}")
    expected = {str(i) for i in expected_ids}
    first_row = {}
    for row_no, cells in enumerate(reader, start=2):
        if not cells:
            continue
        where = f"{shown} row {row_no}"
        if len(cells) != 2:
            raise UserError(f"{where}: {len(cells)} cells, expected 2 ({','.join(columns)})")
        image_id, labels = cells[0].strip(), cells[1].split()
        where += f" (image id '{image_id}')"
        if image_id in first_row:
            raise UserError(f"{where}: duplicate image id (first at row {first_row[image_id]})")
        first_row[image_id] = row_no
        if image_id not in expected:
            raise UserError(f"{where}: not an expected image id (extra row); remove it")
        yield where, image_id, labels
    missing = [i for i in (str(e) for e in expected_ids) if i not in first_row]
    if missing:
        raise UserError(f"{shown}: {len(missing)} expected image id(s) missing, first '{missing[0]}'")


def _validate(path, shown, expected_ids, known_classes, id_column, label_column, n):
    known = None if known_classes is None else {str(c) for c in known_classes}
    if known is not None:
        n = min(n, len(known))  # fewer classes than n: every row can only list them all
    rows = []
    for where, image_id, labels in _rows(path, shown, expected_ids, (id_column, label_column)):
        if len(labels) != n:
            raise UserError(f"{where}: {len(labels)} {label_column} value(s), expected {n} "
                            "separated by single spaces")
        dup = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
        if dup is not None:
            raise UserError(f"{where}: {label_column} '{dup}' repeated in the row; list each class once")
        unknown = next((x for x in labels if known is not None and x not in known), None)
        if unknown is not None:
            raise UserError(f"{where}: unknown {label_column} '{unknown}' (not a training class)")
        rows.append((image_id, labels))
    return rows


def read_truth(path: str | Path, id_column: str = "image_id", label_column: str = "hotel_id",
               fix: str = "") -> dict[str, str]:
    """{image_id: label} from a truth CSV with one label per image. fix: what to add to a missing-column error."""
    from pipeline.core.io import read_table

    frame = read_table(path, required=[id_column, label_column], fix=fix)
    truth = {}
    for row_no, r in enumerate(frame.to_dict("records"), start=2):
        image_id, label = (r[id_column] or "").strip(), (r[label_column] or "").strip()
        if not image_id or not label or len(label.split()) != 1:
            raise UserError(f"{path} row {row_no}: expected one image id and one {label_column}, "
                            f"got '{r[id_column]}','{r[label_column]}'")
        if image_id in truth:
            raise UserError(f"{path} row {row_no}: duplicate image id '{image_id}'")
        truth[image_id] = label
    return truth


def score_submission(path: str | Path, truth_path: str | Path, id_column: str | None = None,
                     label_column: str | None = None, k: int = 5) -> tuple[float, int, str | None]:
    """(MAP@k by Kaggle's rule, rows scored, warning or None) of a submission against a truth CSV. The submission's
    columns are its own header's two names; the truth file's are id_column / label_column, by default those same
    names. Every truth id exactly once, no other ids (errors, as on Kaggle). Rows that repeat a label, hold more or
    fewer than k labels are scored, and named in the warning: `validate` rejects them (and unknown labels, which
    only it can tell)."""
    from pipeline.retrieval.metrics import map_at_k

    header = _header(path, path)
    if len(header) != 2 or not all(h.strip() for h in header) or header[0] == header[1]:
        raise UserError(f"{path}: header is {','.join(header) or 'empty'}, expected two column names: the image id "
                        "and the predictions (e.g. image_id,hotel_id)")
    columns = [id_column or header[0], label_column or header[1]]
    truth = read_truth(truth_path, *columns, fix=f"; the submission's header is {','.join(header)}: name the truth "
                       "file's columns with --id-column / --label-column")
    rows = [(image_id, labels) for _, image_id, labels in _rows(path, path, list(truth), header)]
    counts = {"repeat a label": sum(len(set(labels)) < len(labels) for _, labels in rows),
              f"have more than {k} labels": sum(len(labels) > k for _, labels in rows),
              f"have fewer than {k} labels": sum(len(labels) < k for _, labels in rows)}
    problems = [_rows_phrase(n, what) for what, n in counts.items() if n]
    warning = (f"{', '.join(problems)}; ./run.sh validate would reject this file (Kaggle scores it: a label counts "
               f"once, labels past the {k}th are ignored)") if problems else None
    return map_at_k([labels for _, labels in rows], [truth[i] for i, _ in rows], k=k), len(rows), warning


def _rows_phrase(n, what):
    """'3 rows repeat a label', '1 row repeats a label', '1 row has ...'."""
    if n != 1:
        return f"{n} rows {what}"
    verb, rest = what.split(" ", 1)
    return f"1 row {'has' if verb == 'have' else verb + 's'} {rest}"
