"""Atomic file writes: an artifact is either the old one or the complete new one, never half-written."""
import contextlib
import csv
import errno
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            from .errors import UserError

            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise UserError(f"{path}: disk full while writing it ({e.strerror}); {kept}. Free space on "
                            f"{path.parent} and run the command again") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_csv(path, header, rows):
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)


def read_csv(path, required=()):
    """Rows of a CSV as dicts; a missing file or column is a UserError naming it."""
    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in required if c not in cols]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(cols) or 'none'})")
        return list(reader)
