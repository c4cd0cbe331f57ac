"""Kaggle submission files (`image_id,hotel_id` with 5 space-separated class ids per row): write (a DataFrame),
validate, score against truth files. A submission is validated before it is renamed into place, so a bad one is
never left on disk. The validator reads the file row by row with the csv module rather than pandas: it must name
the row and cell count of a malformed line and see every cell exactly as written."""
import csv
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from pipeline.errors import UserError
from pipeline.io import atomic_path


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
        return _validate(tmp, path, order, known_classes, id_column, label_column, 5, True)


def validate_submission(path: str | Path, expected_ids: Collection[str], known_classes: Iterable[str] | None,
                        id_column: str = "image_id", label_column: str = "hotel_id", n: int = 5,
                        exact: bool = True) -> list[tuple[str, list[str]]]:
    """Rows [(image_id, [labels])] in file order; UserError naming the file and row for any problem: missing file,
    wrong header, missing / extra / duplicate ids, a row with other than n labels (at most n, and at least one, when
    exact=False), a label repeated in a row, a label not in known_classes (skipped when known_classes is None)."""
    return _validate(path, path, expected_ids, known_classes, id_column, label_column, n, exact)


def _validate(path, shown, expected_ids, known_classes, id_column, label_column, n, exact):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{shown}: file not found")
    expected = {str(i) for i in expected_ids}
    known = None if known_classes is None else {str(c) for c in known_classes}
    if exact and known is not None:
        n = min(n, len(known))  # fewer classes than n: every row can only list them all
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != [id_column, label_column]:
            raise UserError(f"{shown}: header is {','.join(header or []) or 'empty'}, "
                            f"expected {id_column},{label_column}")
        rows, first_row = [], {}
        for row_no, cells in enumerate(reader, start=2):
            if not cells:
                continue
            where = f"{shown} row {row_no}"
            if len(cells) != 2:
                raise UserError(f"{where}: {len(cells)} cells, expected 2 ({id_column},{label_column})")
            image_id, labels = cells[0].strip(), cells[1].split()
            where += f" (image id '{image_id}')"
            if image_id in first_row:
                raise UserError(f"{where}: duplicate image id (first at row {first_row[image_id]})")
            first_row[image_id] = row_no
            if image_id not in expected:
                raise UserError(f"{where}: not an expected image id (extra row); remove it")
            if len(labels) != n if exact else not 1 <= len(labels) <= n:
                want = f"{n}" if exact else f"1 to {n}"
                raise UserError(f"{where}: {len(labels)} {label_column} value(s), expected {want} "
                                "separated by single spaces")
            dup = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
            if dup is not None:
                raise UserError(f"{where}: {label_column} '{dup}' repeated in the row; list each class once")
            unknown = next((x for x in labels if known is not None and x not in known), None)
            if unknown is not None:
                raise UserError(f"{where}: unknown {label_column} '{unknown}' (not a training class)")
            rows.append((image_id, labels))
    missing = [i for i in (str(e) for e in expected_ids) if i not in first_row]
    if missing:
        raise UserError(f"{shown}: {len(missing)} expected image id(s) missing, first '{missing[0]}'")
    return rows


def read_truth(path: str | Path, id_column: str = "image_id", label_column: str = "hotel_id") -> dict[str, str]:
    """{image_id: label} from a truth CSV with one label per image."""
    from pipeline.io import read_table

    truth = {}
    for row_no, r in enumerate(read_table(path, required=[id_column, label_column]).to_dict("records"), start=2):
        image_id, label = (r[id_column] or "").strip(), (r[label_column] or "").strip()
        if not image_id or not label or len(label.split()) != 1:
            raise UserError(f"{path} row {row_no}: expected one image id and one {label_column}, "
                            f"got '{r[id_column]}','{r[label_column]}'")
        if image_id in truth:
            raise UserError(f"{path} row {row_no}: duplicate image id '{image_id}'")
        truth[image_id] = label
    return truth


def score_submission(path: str | Path, truth_path: str | Path, id_column: str = "image_id",
                     label_column: str = "hotel_id") -> tuple[float, int]:
    """(MAP@5, rows scored) of a submission against a truth CSV; the submission must list every truth image id and
    no others, with 1 to 5 labels per row."""
    from pipeline.retrieval.metrics import map_at_k

    truth = read_truth(truth_path, id_column, label_column)
    rows = validate_submission(path, list(truth), None, id_column, label_column, n=5, exact=False)
    return map_at_k([labels for _, labels in rows], [truth[i] for i, _ in rows], k=5), len(rows)
