"""`./run.sh download` with the real kaggle client against the loopback stand-in (tests/kaggle_standin.py): offline
is one line within seconds; a download killed midway leaves no folder that looks complete; the next run resumes its
partial archive (a Range request from the partial's end, answered 206), unpacks a loadable competition folder with
its marker and prints its counts; the one after does nothing; no credential in any byte sent, written or printed."""
import os
import random
import subprocess
import sys
import time

import pytest
from test_upload import assert_no_credential, kaggle_env

from pipeline.core.errors import UserError
from pipeline.data.layouts import load_dataset
from pipeline.data.synth import make_dataset
from pipeline.kaggle.download import present

from conftest import assert_one_line_error, cli
from kaggle_standin import CHUNK, StandIn

SLUG = "tiny-hotel-id"


def test_download_is_atomic_counts_the_layout_and_runs_once(tmp_path):
    src = make_dataset(tmp_path / "src", seed=1, hotels=5, masks=2)
    # 1.5 MB that do not compress, beside the photos: an archive of more than 1 MiB, to be interrupted past its first
    (src / "noise.bin").write_bytes(random.Random(0).randbytes(1_500_000))
    ds = load_dataset(src)
    work = tmp_path / "project"
    work.mkdir()
    out = work / "data" / "hotel"

    t = time.monotonic()
    p = cli("download", "--competition", SLUG, "--out", "data/hotel", cwd=work,
            env=dict(kaggle_env(tmp_path), KAGGLE_API_ENVIRONMENT="LOCALHOST", HTTP_PROXY="http://127.0.0.1:9"))
    assert_one_line_error(p, "cannot reach localhost", "for downloading the competition")
    assert time.monotonic() - t < 10 and not (work / "data").exists()

    with StandIn() as s:
        s.add_competition(SLUG, src)
        env = kaggle_env(tmp_path, s)
        # the client writes the archive 1 MiB at a time: its answer stops just past the first MiB, so the run killed
        # there leaves a partial archive of 1 MiB, which the next run must resume from, not fetch again
        s.download_stall_at = 2**20 + CHUNK
        size = len(s.archive(SLUG))
        cmd = [sys.executable, "-m", "pipeline", "download", "--competition", SLUG, "--out", "data/hotel"]
        partial = work / "data" / ".hotel.download" / f"{SLUG}.zip"
        proc = subprocess.Popen(cmd, cwd=work, env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert s.download_stalled.wait(60)
            deadline = time.monotonic() + 30
            while not (partial.is_file() and partial.stat().st_size) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        kept = partial.stat().st_size
        assert 0 < kept < size, (kept, size)
        assert not out.exists()  # interrupted: nothing at data/hotel, the partial archive aside

        s.download_stall_at = None
        p = cli("download", "--competition", SLUG, "--out", "data/hotel", cwd=work, env=env)
        assert p.returncode == 0, p.stdout + p.stderr
        assert (f"({'hotelid'} layout): {len(ds.train)} train images of {len(ds.classes)} classes, {len(ds.test)} "
                "test images") in p.stdout
        assert not (work / "data" / ".hotel.download").exists()
        got = sorted(f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file())
        want = sorted(f.relative_to(src).as_posix() for f in src.rglob("*") if f.is_file())
        assert got == sorted(want + [".download.json"])
        assert all((out / f).read_bytes() == (src / f).read_bytes() for f in want)
        archive_gets = [{k.lower(): v for k, v in h.items()}
                        for m, path, h, _ in s.requests if m == "GET" and path.endswith(f"/{SLUG}.zip")]
        # the killed run's GET; the next run's, whose answer names the same archive (ETag, size) as the partial's
        # marker, so the client drops it and asks for the rest: a Range from the partial's end, answered 206
        assert len(archive_gets) == 3 and "range" not in archive_gets[0], archive_gets
        assert archive_gets[-1].get("range") == f"bytes={kept}-", archive_gets[-1]
        assert s.archive_answers == [(200, 0, size), (200, 0, size), (206, kept, size)], s.archive_answers
        assert not any("authorization" in h for h in archive_gets)  # storage never sees it

        n = len(s.requests)
        again = cli("download", "--competition", SLUG, "--out", "data/hotel", cwd=work, env=env)
        assert again.returncode == 0, again.stderr
        assert "already downloaded" in again.stdout and "nothing to do" in again.stdout
        assert len(s.requests) == n  # not even a listing

    assert_no_credential(s, [p, again], [out])
    (out / want[0]).write_bytes(b"changed")
    for folder, slug, needle in ((out, SLUG, "changed since the download"), (out, "other", "holds the competition"),
                                 (src, SLUG, "is not a download of this pipeline")):
        with pytest.raises(UserError, match=needle):
            present(folder, slug)


def test_a_csv_competition_downloads_with_its_keys_or_is_kept_with_a_warning(tiny_data, tmp_path):
    from test_happywhale import KEYS, _as_happywhale

    src = tmp_path / "whales"
    _, truth, individuals = _as_happywhale(tiny_data / "data", src)
    work = tmp_path / "project"
    work.mkdir()
    with StandIn() as s:
        s.add_competition("tiny-whales", src)
        env = kaggle_env(tmp_path, s)
        bare = cli("download", "--competition", "tiny-whales", "--out", "data/plain", cwd=work, env=env)
        assert bare.returncode == 0, bare.stdout + bare.stderr
        assert "warning: the files are in place but do not load as a csv competition folder" in bare.stdout
        assert "csv.label_column" in bare.stdout and (work / "data" / "plain" / "train.csv").is_file()
        keyed = cli("download", "--competition", "tiny-whales", "--out", "data/whales", *KEYS, cwd=work, env=env)
        assert keyed.returncode == 0, keyed.stdout + keyed.stderr
    assert (f"(csv layout): {len(list((src / 'train_images').iterdir()))} train images of {len(individuals)} "
            f"classes, {len(truth)} test images") in keyed.stdout, keyed.stdout
