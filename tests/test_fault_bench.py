"""bench/faults.py's own parts: its checker reads every kind of entry the embeddings manifest holds as the pipeline
does (a classifier's class centers, a pair head's empty centers entry, embeddings stems of variants), and its embed
kills land after the bench's settings have saved a chunk, so the rerun has one to resume from."""
import importlib.util
import json
import random
import re
import shutil

from conftest import ROOT, tiny_overrides

spec = importlib.util.spec_from_file_location("bench_faults", ROOT / "bench" / "faults.py")
faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faults)


def _copy(trained, where, *extra):
    """Run a of the trained fixture copied under `where` without its embeddings: (config path, overrides)."""
    tiny, runs = trained
    shutil.copytree(runs / "a", where / "a", ignore=shutil.ignore_patterns("embeddings"))
    shutil.copy(runs / "a.yaml", where / "a.yaml")
    return where / "a.yaml", tiny_overrides(tiny, where, "epochs=1", *extra)


def test_checker_knows_every_entry_of_a_real_manifest(trained, tmp_path, monkeypatch):
    import pipeline.retrieval.centers as centers
    from pipeline.config import load_config
    from pipeline.retrieval.embeddings import Variant
    from pipeline.retrieval.runsets import ensure_run_centers, prepare_run

    path, overrides = _copy(trained, tmp_path)
    cfg = load_config(str(path), overrides)
    prepare_run(cfg, log=lambda *a: None)
    prepare_run(cfg, Variant(flip=True, multicrop=5), log=lambda *a: None)
    out = tmp_path / "a" / "fold0" / "embeddings"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["centers"]["classes"] > 0 and {"gallery.flip", "val.flip.mc5"} <= set(manifest)
    assert faults._corrupt(tmp_path / "a") == []

    # a pair head's entry: no classes, no files
    for f in ("centers.npy", "centers.csv"):
        (out / f).unlink()
    del manifest["centers"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(centers, "centers_from_checkpoint", lambda state: None)
    ensure_run_centers(cfg)
    assert json.loads((out / "manifest.json").read_text())["centers"]["classes"] == 0
    assert faults._corrupt(tmp_path / "a") == []

    # what it must still catch: an entry its files disagree with, and an entry of a kind it does not know
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["val"]["rows"] += 1
    manifest["orientation"] = {"key": "x"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert faults._corrupt(tmp_path / "a") == [f"{out / 'manifest.json'}:val", f"{out / 'manifest.json'}:orientation "
                                               "(an entry of no kind the checker knows)"]


def test_embed_kills_land_after_a_saved_chunk_and_the_rerun_resumes(trained, tmp_path):
    path, overrides = _copy(trained, tmp_path, *faults.TINY)  # the bench's batching and chunks
    cmd = faults._cmd("embed", path, overrides)
    seconds, killed, out, marks = faults._run(cmd)
    assert not killed
    # the first line a kill counts from follows a chunk of a split that has more
    assert re.fullmatch(r"embedded a gallery 16/\d+", [x for x in out.splitlines() if faults.SAVED.match(x)][0])
    rng = random.Random(0)
    drawn = [faults._kill_point(rng, marks, seconds) for _ in range(2000)]
    gaps = [b - a for a, b in zip(marks, [*marks[1:], seconds])]  # each mark's stretch to the next (the last: end)
    assert all(1 <= n <= len(marks) and 0 <= delay <= gaps[n - 1] for n, delay in drawn)
    assert {n for n, _ in drawn} == set(range(1, len(marks) + 1))  # every saved chunk is a place a kill may follow

    shutil.rmtree(tmp_path / "a" / "fold0" / "embeddings")
    _, killed, _, _ = faults._run(cmd, kill=(1, 0.0))
    chunks = list((tmp_path / "a" / "fold0" / "embeddings").glob("*.parts/*.npy"))
    _, _, out, _ = faults._run(cmd)
    assert killed and chunks and sum(int(k) for k in faults.KEPT.findall(out)) == len(chunks)
