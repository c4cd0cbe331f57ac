"""Embed the gallery (all training images, test pipeline), the validation fold (val pipeline) and the test images
with a trained run: runs/<config>/fold<k>/embeddings/<stem>.npy (float16 rows), <stem>.csv (image_id,label in
row order; label empty for test) and manifest.json (one entry per stem).

Embedding-time variants, each cached under its own file stem (the defaults are the plain gallery/val/test):
  --flip                    flip TTA on every split: normalise(e(x) + e(hflip x))          stem <split>.flip
  --multicrop 5|9           the queries (val, test) as the mean of their kept crops' unit
                            embeddings, crops more than half red (the occlusion) dropped    stem <split>.mc5 / .mc9
  --gallery-pipeline val    the gallery embedded with the val pipeline (simulated red hole) stem gallery.galval
  --scales 0.75,1,1.25      the queries embedded at each scale of the run's input size, the
                            normalised mean of the unit embeddings (multi-scale TTA)      stem <split>.ms0.75-1-1.25
  --gallery-scales S,...    the same for the gallery                                       stem gallery.ms<...>
e.g. --flip --multicrop 9 gives gallery.flip, val.flip.mc9, test.flip.mc9.

A stem is recomputed only when its cache key changes: the checkpoint's content hash, the image list (path, size,
mtime), the transform (with the variant and the image reduction, image_scale), the image size, and what made the
rows (their dtype, AMP, cpu or cuda). A second call with nothing changed runs no forward pass. A split is embedded
in chunks of embed_chunk images, each kept as it finishes (embeddings/<stem>.parts/): a killed embed resumes from
them, and its result is byte for byte an uninterrupted run's. With image_cache=true the images are read from the
image cache (./run.sh cache-images), its missing entries added first.

--nproc N embeds under torchrun with N processes (one GPU each): each takes every N-th batch and rank 0 writes
the same files, byte for byte, as one process.

example: ./run.sh embed m1 --data data/demo --fold 0 --flip --multicrop 5"""


def add_arguments(p):
    p.add_argument("config", help="config name (m1 ...) or .yaml path of a trained run")
    p.add_argument("--data", help="competition folder (overrides the config's data)")
    p.add_argument("--fold", type=int, help="fold of the run (default 0)")
    p.add_argument("--checkpoint", choices=["best", "last", "ema"], help="which checkpoint (default: config's, best)")
    p.add_argument("--flip", action="store_true", help="flip TTA on every split: normalise(e(x) + e(hflip x))")
    p.add_argument("--multicrop", type=int, default=0, metavar="N",
                   help="queries (val, test) as the mean of their crops' embeddings, mostly-red crops dropped: "
                        "5 (corners + centre, 60%% side) or 9 (3x3 grid, 50%% side); 0 = off (default)")
    p.add_argument("--gallery-pipeline", default="test", metavar="{test,val}",
                   help="embed the gallery with the test pipeline (default) or the val one (simulated red hole)")
    p.add_argument("--scales", metavar="S1,S2,...", help="multi-scale TTA of the queries, e.g. 0.75,1,1.25")
    p.add_argument("--gallery-scales", metavar="S1,S2,...", help="multi-scale TTA of the gallery")
    p.add_argument("--nproc", type=int, metavar="N", help="processes (GPUs) under torchrun; default 1")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def run(args):
    from pipeline.config import load_config
    from pipeline.core.distributed import run_stage
    from pipeline.inference.tricks import parse_scales
    from pipeline.retrieval.embeddings import Variant
    from pipeline.retrieval.runsets import prepare_run

    cfg = load_config(args.config, args.overrides, data=args.data, fold=args.fold, checkpoint=args.checkpoint)
    variant = Variant(flip=args.flip, multicrop=args.multicrop, gallery_pipeline=args.gallery_pipeline,
                      scales=parse_scales("--scales", args.scales),
                      gallery_scales=parse_scales("--gallery-scales", args.gallery_scales)).checked()
    run_stage(args.nproc, args._argv, lambda: prepare_run(cfg, variant=variant), same_threads=True)
