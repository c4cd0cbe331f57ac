"""The cached embeddings of several runs on the same images (RunSetEmbeddings), and of runs of configs on
folds (FoldSets), computed where stale, checked to list the same images."""
from dataclasses import dataclass
from functools import cached_property

from pipeline.config import config_names, run_dir, run_names
from pipeline.core.errors import UserError
from pipeline.retrieval.embeddings import (
    SPLITS,
    EmbeddingSet,
    RunEmbeddings,
    Variant,
    ensure_embeddings,
    read_manifest,
    run_checkpoint,
)


@dataclass
class RunSetEmbeddings:
    """The cached embeddings of several runs on the same images, one EmbeddingSet per split (one array per run)."""
    names: list
    gallery: EmbeddingSet
    val: EmbeddingSet
    test: EmbeddingSet
    centers: list | None = None  # per run its ClassCenters (a memmap; None: a pair head), for knn_alpha < 1

    @cached_property
    def val_gallery(self) -> EmbeddingSet:
        """The training images without the validation rows (a copy), so a validation query never finds itself."""
        return self.gallery.without(self.val.ids)


def load_embeddings(cfgs: list, tricks: dict, log=print) -> RunSetEmbeddings:
    """Each run's gallery / val / test embeddings of the variant the tricks ask for (computed where stale), checked
    to list the same images."""
    names = [c["name"] for c in cfgs]
    if len(set(names)) != len(names):
        raise UserError(f"a config is named twice: {' '.join(names)}")
    return _combine(names, [_ensure(c, tricks, log) for c in cfgs], SPLITS)


def _ensure(cfg, tricks, log):
    """The run's RunEmbeddings of each view the tricks ask for: one, or with rotation TTA one per quarter turn."""
    return [prepare_run(cfg, Variant.of(tricks, turn), log=log) for turn in range(4 if tricks["rotate"] else 1)]


def prepare_run(cfg: dict, variant: Variant = Variant(), log=print) -> RunEmbeddings:
    """Everything a run ranks with, each step doing nothing when its files are current: the rotation classifier
    (an upright variant), the variant's embeddings, then the class centers (rank 0)."""
    from pipeline.core import distributed

    variant = variant.checked()
    if variant.upright:
        ensure_run_orienter(cfg, log)
    run = ensure_embeddings(cfg, variant, log)
    if distributed.is_main():
        ensure_run_centers(cfg)
    return run


def ensure_run_orienter(cfg: dict, log=print) -> None:
    """The run's rotation classifier (upright queries), trained once per checkpoint on its training images beside
    it (run_dir/orientation.pt); nothing when it is there already."""
    from pipeline.core import checkpoint, distributed
    from pipeline.core.device import pick_device
    from pipeline.data.folds import split
    from pipeline.data.image_cache import image_reader
    from pipeline.retrieval.embeddings import load_model
    from pipeline.retrieval.orientation import ensure_orienter, has_orienter

    log = distributed.main_only(log)
    run, ck_path = run_dir(cfg), run_checkpoint(cfg)
    ck_hash = checkpoint.file_hash(ck_path)
    if has_orienter(run, ck_hash):
        return
    state, device, ds = checkpoint.load(ck_path, cfg), pick_device(cfg["device"], log), split(cfg)[0]
    model = load_model(state["config"], state["model"], cfg, device, state["image_size"])
    reader = image_reader(cfg, state["image_size"], {"train": ds.train, "test": ds.test}, log)
    ensure_orienter(cfg, model, ds.train, reader, device, run, ck_hash, log, state["image_size"])


def ensure_run_centers(cfg: dict) -> None:
    """The run's class centers beside its embeddings (embeddings/centers.npy/.csv), extracted from its checkpoint
    once per checkpoint (centers.ensure_centers)."""
    from pipeline.core import checkpoint
    from pipeline.retrieval.centers import CENTERS, ensure_centers

    out, ck_path = run_dir(cfg) / "embeddings", run_checkpoint(cfg)
    out.mkdir(parents=True, exist_ok=True)
    ensure_centers(out, CENTERS, read_manifest(out), checkpoint.file_hash(ck_path),
                   lambda: checkpoint.load(ck_path, cfg))


def _combine(names, runs, splits) -> RunSetEmbeddings:
    """One EmbeddingSet per split of the runs (each a list of RunEmbeddings, one per view), one array per run, the
    query splits with their turned views; a split not in splits is empty."""
    out = {}
    for split in SPLITS:
        views = []
        for v in range(len(runs[0]) if split != "gallery" else 1):
            loaded = [r[v].load(split) for r in runs] if split in splits else [EmbeddingSet([], [], [])]
            if any(x.ids != loaded[0].ids for x in loaded[1:]):
                raise UserError(f"the models' {split} embeddings list different images: re-embed them on the same "
                                "data")
            views.append(EmbeddingSet([a for x in loaded for a in x.arrays], loaded[0].ids, loaded[0].labels))
        out[split] = views[0]
        out[split].views = views[1:]
    return RunSetEmbeddings(names, **out, centers=[r[0].centers() for r in runs])


@dataclass
class FoldSets:
    """Runs of the same configs on one or more folds (retrieval on fold models): per fold its runs (one per config,
    in config order) with that fold's validation images, and every run (in the order given) with the gallery (all
    training images) and test images, the same for every fold, to rank the test images with all fold models."""
    configs: list  # config names
    folds: dict  # fold -> RunSetEmbeddings
    every: RunSetEmbeddings

    def need_val(self, cfg: dict) -> None:
        for fold, inputs in self.folds.items():  # every fold must have validation images to be scored
            need_val(inputs.val.ids, dict(cfg, fold=fold))


def load_fold_sets(cfgs: list, tricks: dict, log=print) -> FoldSets:
    """The cached embeddings of runs of configs on folds (each config on the same folds), computed where stale."""
    names = run_names(cfgs)
    runs = [_ensure(c, tricks, log) for c in cfgs]
    configs = config_names(cfgs)
    groups = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(c["fold"], []).append(i)
    for fold, group in groups.items():
        if [cfgs[i]["name"] for i in group] != configs:
            raise UserError(f"fold {fold} has runs of {' '.join(cfgs[i]['name'] for i in group)}: give every config "
                            f"({' '.join(configs)}) on the same folds")
    folds = {f: _combine([names[i] for i in g], [runs[i] for i in g], SPLITS) for f, g in groups.items()}
    every = next(iter(folds.values())) if len(folds) == 1 else _combine(names, runs, ("gallery", "test"))
    return FoldSets(configs, folds, every)


def every_run_tricks(tricks: dict, cfgs: list) -> dict:
    """The tricks for ranking with every run of cfgs at once: --weights holds one weight per config, given to each
    of its fold models."""
    if tricks["weights"] is None:
        return tricks
    configs = config_names(cfgs)
    return dict(tricks, weights=[tricks["weights"][configs.index(c["name"])] for c in cfgs])


def need_val(val_ids: list, cfg: dict) -> None:
    """A UserError when the config's fold has no validation images."""
    if not val_ids:
        raise UserError(f"fold {cfg['fold']} has no validation images in {cfg['data']}: pick another --fold "
                        f"(see {cfg['folds_file']})")
