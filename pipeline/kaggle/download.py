"""Download a competition's files with the official client into a competition folder, atomically: the archive
arrives in data/.<name>.download/ (kept when interrupted, so the client resumes it), is unpacked and loaded as a
competition folder there (layout auto-detected), gets its .download.json marker, and only then is renamed to
data/<name>. So data/<name> exists only complete; a folder with its marker and every file intact is not fetched
again. The archive must hold exactly the files Kaggle lists, with their sizes, and a competition that unpacks to
more than --max-unpacked-gb is refused before its download starts."""
import json
import lzma
import os
import shutil
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.io import write_text
from pipeline.kaggle.client import call, client, now, pages

MARKER = ".download.json"
MAX_UNPACKED_GB = 200.0  # GB = 10^9 bytes; the largest image competitions unpack to a few hundred GB
# what zipfile raises on an archive it cannot unpack: damaged data (zlib, lzma, a short stream, a CRC or header that
# does not match), a member encrypted (RuntimeError) or packed with a method it lacks (NotImplementedError)
_UNREADABLE = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError, RuntimeError, NotImplementedError)


def _rules(slug):
    return f"join the competition and accept its rules at kaggle.com/competitions/{slug}/rules, then rerun"


def present(out: Path, slug: str) -> dict | None:
    """The marker of a complete download of `slug` at out; None when there is nothing at out (or an empty folder);
    a UserError for anything else there (another competition, a folder not made here, a file changed since)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    if not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose another --out")
    try:
        marker = json.loads((out / MARKER).read_text())
        files = marker["files"]
    except OSError:
        raise UserError(f"--out {out}: exists and is not a download of this pipeline (no {MARKER}); choose another "
                        "--out or remove it") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{out / MARKER}: damaged; delete {out} and run ./run.sh download again") from None
    if marker.get("competition") != slug:
        raise UserError(f"--out {out}: holds the competition {marker.get('competition')} (its {MARKER}), not "
                        f"{slug}; choose another --out")
    for f in files:
        p = out / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"]:
            raise UserError(f"{p}: missing or changed since the download ({out / MARKER} lists {f['bytes']:,} B); "
                            f"delete {out} and run ./run.sh download again")
    return marker


def _listed(api, slug: str, fixes: dict, max_gb: float) -> dict:
    """{name: bytes} of every file Kaggle lists for the competition (every page of the listing); more than max_gb
    in all is a UserError, before anything is downloaded."""
    listed = {f.name: f.total_bytes for r in pages(f"file list of the competition {slug}", api.competition_list_files,
                                                   slug, fixes=fixes) for f in r.files or []}
    total = sum(listed.values())
    if total > max_gb * 1e9:
        raise UserError(f"competition {slug}: Kaggle lists {len(listed)} files of {total:,} B unpacked, more than "
                        f"--max-unpacked-gb {max_gb:g}: give a larger --max-unpacked-gb if the disk has the room")
    return listed


def _check_members(infos: list, listed: dict) -> dict:
    """{name: bytes} of the archive's files, which must be the files Kaggle lists, each once, with their sizes
    (zipfile unpacks a member to no more than its size), so that it unpacks to what the listing says; else a
    BadZipFile naming the first difference. Once: a second member of a name would be unpacked over the first."""
    members = {}
    for m in (m for m in infos if not m.is_dir()):
        if m.filename in members:
            raise zipfile.BadZipFile(f"it holds {m.filename} twice")
        members[m.filename] = m.file_size
    for name in sorted(members.keys() | listed.keys()):
        if name not in listed:
            raise zipfile.BadZipFile(f"it holds {name} ({members[name]:,} B), which Kaggle does not list")
        if members.get(name) != listed[name]:
            raise zipfile.BadZipFile(f"Kaggle lists {name} ({listed[name]:,} B), the archive "
                                     + ("lacks it" if name not in members else f"has {members[name]:,} B"))
    return members


def _why(member: zipfile.ZipInfo, e: Exception) -> str:
    if member.flag_bits & 0x1:
        return f"member {member.filename} is encrypted"
    if isinstance(e, NotImplementedError):
        return f"member {member.filename} uses compression method {member.compress_type}, which zipfile cannot read"
    return f"member {member.filename}: {' '.join(str(e).split()) or type(e).__name__}"


def _unpack(archive: Path, dest: Path, listed: dict, log) -> list:
    """archive unpacked into dest (emptied first); [{path, bytes}] of its files, which must be those Kaggle lists.
    An archive that is damaged or cannot be unpacked here is deleted with what was unpacked of it, so that the next
    run fetches it again."""
    shutil.rmtree(dest, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as z:
            members = _check_members(z.infolist(), listed)
            log(f"unpacking {len(members)} files ({sum(members.values()) / 2**20:.1f} MB) into {dest}")
            for m in z.infolist():
                try:
                    z.extract(m, dest)  # extract drops '..' and absolute parts of member names
                except (*_UNREADABLE, OSError) as e:
                    if isinstance(e, OSError) and e.errno is not None:
                        raise  # the disk's, not the archive's (bz2 reports bad data as an OSError without errno)
                    raise zipfile.BadZipFile(_why(m, e)) from None
    except _UNREADABLE as e:
        archive.unlink(missing_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        raise UserError(f"{archive}: not unpacked ({' '.join(str(e).split())}); deleted it and what was "
                        "unpacked of it: run ./run.sh download again") from None
    except OSError as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise UserError(f"unpacking {archive} into {dest} failed ({e.strerror or e}): free space on {dest.parent} "
                        "and run ./run.sh download again (the archive is kept)") from None
    return [{"path": p.relative_to(dest).as_posix(), "bytes": p.stat().st_size}
            for p in sorted(dest.rglob("*")) if p.is_file()]


def download(competition: str | None = None, out: str | Path | None = None, cfg: dict | None = None,
             log: Callable[[str], object] = print, max_unpacked_gb: float = MAX_UNPACKED_GB) -> Path:
    """Download `competition` (default: cfg's) to `out` (default data/<competition>); cfg (default: the default
    config) gives the layout and its csv keys the unpacked folder is loaded with."""
    from pipeline.config import load_config
    from pipeline.data.layouts import detect_layout, load_dataset

    if not max_unpacked_gb > 0:  # NaN too
        raise UserError(f"--max-unpacked-gb {max_unpacked_gb:g}: give a positive number of GB (10^9 bytes)")
    cfg = cfg or load_config("default")
    slug = competition or cfg["competition"]
    out = Path(out or Path("data") / slug)
    marker = present(out, slug)
    if marker:
        mb = sum(f["bytes"] for f in marker["files"]) / 2**20
        log(f"{out}: {slug} is already downloaded ({len(marker['files'])} files, {mb:.1f} MB, "
            f"{marker.get('downloaded')}); nothing to do (delete {out} to download it again)")
        return out
    api = client(f"downloading the competition {slug}")
    fixes = {403: _rules(slug), 404: f"no competition '{slug}': check --competition (kaggle.com/competitions/<slug>)"}
    listed = _listed(api, slug, fixes, max_unpacked_gb)
    log(f"competition {slug}: {len(listed)} files listed, {sum(listed.values()) / 2**20:.1f} MB; downloading the "
        "archive")
    work = out.parent / f".{out.name}.download"
    work.mkdir(parents=True, exist_ok=True)
    call(f"download of the competition {slug}", api.competition_download_files, slug, path=str(work), quiet=False,
         fixes=fixes)
    archive = work / f"{slug}.zip"  # the client's name: <slug>.<the download URL's extension>
    if not archive.is_file():
        raise UserError(f"download of the competition {slug}: the client wrote no {archive} (found: "
                        f"{', '.join(sorted(p.name for p in work.iterdir())) or 'nothing'})")
    unpacked = work / "unpacked"
    files = _unpack(archive, unpacked, listed, log)
    layout = cfg["layout"] if cfg["layout"] != "auto" else detect_layout(unpacked)
    try:
        ds = load_dataset(unpacked, cfg)
        counts = {"train_images": len(ds.train), "classes": len(ds.classes), "test_images": len(ds.test)}
    except UserError as e:
        # the files are complete and checked against Kaggle's list: keep them; the layout keys are the user's to set
        log(f"warning: the files are in place but do not load as a {layout} competition folder yet ({e}); set the "
            "layout keys (--layout, csv.*=...) in your config or on the command line of the next stages")
        counts = {"train_images": None, "classes": None, "test_images": None}
    write_text(unpacked / MARKER, json.dumps({"competition": slug, "archive": archive.name,
                                              "archive_bytes": archive.stat().st_size, "downloaded": now(),
                                              "layout": layout, **counts, "files": files}, indent=1) + "\n")
    if present(out, slug) is None:  # still nothing there: it may have changed while we downloaded
        os.replace(unpacked, out)  # onto nothing or an empty folder: one rename
    shutil.rmtree(work, ignore_errors=True)
    loaded = (f"{counts['train_images']} train images of {counts['classes']} classes, {counts['test_images']} test "
              "images" if counts["classes"] is not None else "not loaded (see the warning)")
    log(f"{out}: {slug} ({layout} layout): {loaded}; {len(files)} files, "
        f"{sum(f['bytes'] for f in files) / 2**20:.1f} MB")
    return out
