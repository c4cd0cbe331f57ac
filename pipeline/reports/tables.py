"""The one writer of result tables: a pandas DataFrame as markdown (for people), CSV (for spreadsheets and pandas)
and JSON (for programs), written atomically beside each other."""
import json
import math
from pathlib import Path

from pipeline.core.io import write_table, write_text


def markdown(frame, title: str | None = None) -> str:
    """A pipe table of the frame's cells as they are (strings are not re-parsed as numbers), under a title."""
    text = frame.to_markdown(index=False, tablefmt="pipe", disable_numparse=True)
    return (f"{title}\n\n" if title else "") + text + "\n"


def records(frame) -> list:
    """The rows as dicts of plain Python values; a missing (NaN) cell is left out of its row."""
    return [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in frame.to_dict("records")]


def _csv_cell(v):
    if isinstance(v, (list, tuple)):
        return "+".join(map(str, v))
    return int(v) if isinstance(v, bool) else v


def write_tables(out_dir, stem: str, frame, *, shown=None, title: str | None = None, info: dict | None = None,
                 log=print) -> str:
    """out_dir/stem.md (`shown`, a display version of the frame with formatted cells, or the frame itself),
    stem.csv (the frame; list cells joined by '+', booleans as 1 / 0) and stem.json ({**info, "rows": the
    frame's records}). Returns the markdown."""
    out_dir = Path(out_dir)
    text = markdown(frame if shown is None else shown, title)
    write_text(out_dir / f"{stem}.md", text)
    flat = frame.apply(lambda col: col.map(_csv_cell))
    write_table(out_dir / f"{stem}.csv", flat)
    write_text(out_dir / f"{stem}.json", json.dumps({**(info or {}), "rows": records(frame)}, indent=1,
                                                    ensure_ascii=False))
    log(text + f"wrote {out_dir / stem}.md, {stem}.csv, {stem}.json")
    return text
