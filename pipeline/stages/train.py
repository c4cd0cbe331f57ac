"""Train a config on one fold: runs/<config>/fold<k>/ gets config.yaml, last.pt, best.pt, metrics.csv, curves.png.

Batches come from the sampler registry (pipeline/data/samplers.py), the loss from the head registry
(pipeline/model/heads.py), optimiser and EMA from pipeline/training/optimizers.py, the schedule from
pipeline/training/schedulers.py. With ema > 0, ema.pt holds the averaged weights.

Validation each epoch: loss and accuracy of the head (accuracy only for classifier heads), and MAP@5 of the
validation images (val pipeline: with the red test-like hole) against the training images (test pipeline) as
gallery. --resume continues from last.pt (weights, optimiser, scheduler, epoch, position in the epoch, RNG).

--folds 0-4 (or 0,2, or all: every fold of the folds file) trains each fold in its own run folder, one after the
other; with --resume the finished folds are skipped and the interrupted one resumes.

--nproc N trains under torchrun with N processes (DDP; one GPU each, or gloo on the CPU). batch_size stays the
global batch: each process takes rows rank::N of the same batches, and the loss is computed on the whole
gathered batch, so N processes follow the one-process run (exactly, up to float rounding, for a model without
BatchNorm or with sync_bn=true on CUDA). Only rank 0 writes; --resume works with any N.

example: ./run.sh train m1 --data data/demo --fold 0 epochs=2 batch_size=8
         ./run.sh train m1 --folds 0-4 [--resume]
         ./run.sh train m1 --nproc 4 sync_bn=true"""
from pipeline.config import add_fold_arguments


def add_arguments(p):
    p.add_argument("config", help="config name in pipeline/configs (m1 ... m7) or a .yaml path")
    p.add_argument("--data", help="competition folder (overrides the config's data)")
    add_fold_arguments(p, True, "validation fold (default: the config's, 0)")
    p.add_argument("--resume", action="store_true", help="continue from last.pt of this run (with --folds: skip "
                   "the finished folds)")
    p.add_argument("--nproc", type=int, metavar="N", help="processes (GPUs) under torchrun; default 1")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=2 arcface.m=0.3")


def run(args):
    from pipeline.config import load_config, load_folds
    from pipeline.core.distributed import run_stage

    # config errors first, before training's imports (torch, albumentations: seconds) and before launching
    if args.folds is not None:
        cfgs = load_folds(args.config, args.folds, args.overrides, data=args.data)
        from pipeline.training.cross_validation import train_folds

        run_stage(args.nproc, args._argv, lambda: train_folds(cfgs, resume=args.resume))
        return
    cfg = load_config(args.config, args.overrides, data=args.data, fold=args.fold)
    from pipeline.training.loop import train

    run_stage(args.nproc, args._argv, lambda: train(cfg, resume=args.resume))
