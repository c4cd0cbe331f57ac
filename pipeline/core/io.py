"""Files in and out: an artifact is either the old one or the complete new one, never half-written (temp file,
then rename), and tables are pandas DataFrames whose cells are read as strings (ids such as '007' stay ids)."""
import codecs
import contextlib
import errno
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
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
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise UserError(f"{path}: disk full while writing it ({e.strerror}); {kept}. Free space on "
                            f"{path.parent} and run the command again") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def save_npy(path, array) -> None:
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_table(path, frame) -> None:
    """A DataFrame as CSV (no index, '\\n' line ends), atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def read_text(path: str | Path) -> str:
    """A text file we did not write (a CSV of the competition's or the user's) as UTF-8, a byte-order mark dropped.
    Other bytes are a UserError naming the row: no encoding is guessed, because latin-1 or cp1252 decode any bytes
    at all and would hand on ids that differ from the data's without a word."""
    data = Path(path).read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        row = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path} row {row}: not UTF-8 text (byte 0x{data[e.start]:02x}, e.g. saved as latin-1 or "
                        "cp1252 by a spreadsheet); save it as UTF-8") from None


def read_table(path: str | Path, required: Iterable[str] = (), fix: str = "",
               ours: str | None = None) -> "pd.DataFrame":
    """A CSV as a DataFrame of strings (empty cells are ''); a missing file, a missing column or a malformed row is
    a UserError naming it. fix: what to add to a missing-column error. ours: for a file the pipeline wrote (an
    embeddings table, the image cache's index), how to remake it: any damage is then damaged(path, ..., ours)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")

    def refuse(what, told):
        return damaged(path, what, ours) if ours else UserError(f"{path}: {told}")

    try:
        # index_col=False: rows with a trailing extra field must not shift the columns under the header; the extra
        # field is ignored, as extra columns are (pandas warns about it: silenced, it is not the user's concern)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skip_blank_lines=True,
                                index_col=False)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except UnicodeDecodeError:
        if not ours:
            read_text(path)  # pandas does not say where; read_text's error does
        raise refuse("not UTF-8 text", "not UTF-8 text; save it as UTF-8") from None
    except pd.errors.ParserError as e:
        what = f"not a readable CSV ({' '.join(str(e).split())})"
        raise refuse(what, what) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        what = f"missing column(s) {', '.join(missing)} (has: {', '.join(map(str, frame.columns)) or 'none'})"
        raise refuse(what, what + fix)
    return frame


def damaged(path: str | Path, what: str, fix: str) -> UserError:
    """The one message for a file of ours that is there but broken: what is wrong with it and how to remake it
    (fix: a command, e.g. 're-embed: ./run.sh embed m1')."""
    return UserError(f"{path} is damaged ({' '.join(str(what).split())}): delete it and {fix}")


def read_json(path: str | Path, fix: str, kind: type = dict):
    """A JSON file we wrote (a manifest, a marker, a record), parsed; a file that is not UTF-8 JSON or whose top
    level is not `kind` is damaged(path, ..., fix). A missing file is the caller's to handle."""
    import json

    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise damaged(path, f"not JSON: {e}", fix) from None
    if not isinstance(value, kind):
        raise damaged(path, f"a JSON {type(value).__name__}, not a {kind.__name__}", fix)
    return value


def load_npy(path: str | Path, fix: str, mmap: bool = True, ndim: int | None = None):
    """A .npy array we wrote (embeddings, class centers), memory-mapped by default; a cut, unparseable or
    object-dtype file, or one of another number of dimensions, is damaged(path, ..., fix)."""
    import numpy as np

    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise damaged(path, f"not a readable .npy: {e}", fix) from None
    if ndim is not None and array.ndim != ndim:
        raise damaged(path, f"{array.ndim}-d, expected {ndim}-d", fix)
    return array


def drop_pages(array) -> None:
    """Unmap the pages a read-only memmap (np.load(mmap_mode="r") or a slice of one) has faulted in; no-op for an
    array in memory. Loops that read a gallery block by block call it after each block: the pages stay in the page
    cache (the next pass faults them back from there, no disk read), but the process no longer holds them, so its
    resident memory stays at its budgeted buffers instead of growing to every gallery file's size (six 4096-d
    galleries of Hotel-ID's 44k photos are 2.2 GB; bench/scale.py)."""
    import mmap

    mm = getattr(array, "_mmap", None)
    if mm is not None and not mm.closed and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def take_rows(array, keep, block_bytes: int = 64 << 20):
    """array[keep] (keep: a boolean mask over the rows). An array in memory gives a copy in memory; a memmap gives a
    read-only memmap of an unlinked file beside it, written block by block (drop_pages after each), so a subset of a
    gallery on disk (validation's gallery, the training images without the validation fold: 2 GB for six 4096-d
    models at Hotel-ID's scale) stays on disk like the gallery itself. The file's space is freed with the array."""
    import numpy as np

    if getattr(array, "_mmap", None) is None or not getattr(array, "filename", None):
        return np.asarray(array)[keep]
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        return np.empty((0, *array.shape[1:]), array.dtype)
    step = max(1, block_bytes // max(1, array[:1].nbytes))
    with tempfile.TemporaryFile(dir=Path(array.filename).parent) as f:
        for a in range(0, rows.size, step):
            f.write(np.ascontiguousarray(array[rows[a:a + step]]).data)
            drop_pages(array)
        f.flush()
        return np.memmap(f, array.dtype, "r", shape=(rows.size, *array.shape[1:]))  # mmap keeps its own descriptor


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MB blocks (weights and embeddings run to GBs)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def within(folder: str | Path, name: str) -> Path | None:
    """folder/name resolved, where it stays inside folder; None where the name leaves it ('..', an absolute path, a
    symlink out). For file names that come from elsewhere (a server's listing), before anything is written there."""
    root = Path(folder).resolve()
    path = (root / name).resolve()
    return path if root in path.parents else None
