"""Command line: one sub-command per stage. Each stage module has `add_arguments(parser)` and `run(args)`;
its docstring's first line is the summary and the rest (with an example) is the stage's --help text."""
import argparse
import importlib
import sys

from pipeline.errors import UserError

# stage name -> its module in pipeline/stages (their heavy imports happen in run(), so `--help` starts fast)
STAGES = {
    "make-data": "pipeline.stages.make_data",
    "folds": "pipeline.stages.folds",
    "train": "pipeline.stages.train",
    "embed": "pipeline.stages.embed",
    "ensemble": "pipeline.stages.ensemble",
    "ensemble-report": "pipeline.stages.ensemble_report",
    "show": "pipeline.stages.show",
    "evaluate": "pipeline.stages.evaluate",
    "compare": "pipeline.stages.compare",
    "score": "pipeline.stages.score",
    "validate": "pipeline.stages.validate",
    "kernel": "pipeline.stages.kernel",
    "upload": "pipeline.stages.upload",
    "kernel-status": "pipeline.stages.kernel_status",
    "demo": "pipeline.stages.demo",
    "test": "pipeline.stages.test",
}

EPILOG = """typical flow:
  ./run.sh make-data --out data/demo          # or point --data at a real competition folder
  ./run.sh folds --data data/demo
  ./run.sh train m1 --data data/demo --fold 0
  ./run.sh embed m1 --data data/demo --fold 0
  ./run.sh ensemble m1 m2 --data data/demo --out my_sub
  ./run.sh validate submissions/my_sub.csv --data data/demo
  ./run.sh kernel my_kernel --models m1 m2 --data data/demo --owner ME  # offline Kaggle kernel, checked here
  ./run.sh upload my_kernel                     # datasets + kernel via the kaggle client
run './run.sh <stage> --help' for a stage's options and an example."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./run.sh", description="Image-retrieval pipeline for Kaggle instance-identification competitions.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    for name, modname in STAGES.items():
        mod = importlib.import_module(modname)
        doc = (mod.__doc__ or "").strip()
        summary, _, rest = doc.partition("\n")
        p = sub.add_parser(name, help=summary, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def one_line(err: BaseException) -> str:
    """A UserError raised in a DataLoader worker comes back with the worker's traceback in its text: keep the
    user's message, its last line."""
    text = str(err).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1].removeprefix(f"{UserError.__module__}.UserError: ")
    return text


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file or pipe as they happen
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args._argv = argv  # --nproc relaunches this same command under torchrun
    if args.stage is None:
        parser.print_help()
        return 0
    # key=value config overrides may stand anywhere after the stage (./run.sh train m1 --fold 0 epochs=2)
    if extra:
        bad = [x for x in extra if "=" not in x or x.startswith("-")]
        if bad or not hasattr(args, "overrides"):
            parser.parse_args(argv)  # argparse's own one-line usage error and exit 2
        args.overrides = list(args.overrides) + extra
    try:
        return args._module.run(args) or 0
    except UserError as e:
        from pipeline.training.distributed import report_error

        if not report_error(one_line(e)):  # a torchrun worker hands it to the launcher, which prints it once
            print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
