"""Command line: one sub-command per stage. Each stage module has `add_arguments(parser)` and `run(args)`;
its docstring's first line is the summary and the rest (with an example) is the stage's --help text."""
import argparse
import importlib
import sys

from pipeline.core.errors import UserError
from pipeline.stages import NETWORK, STAGES

EPILOG = """typical flow (the long version: docs/kaggle.md):
  ./run.sh weights m1 m2                      # online, once: the backbones' ImageNet weights into the caches
  ./run.sh download --out data/hotel-id       # online: the competition's files (or ./run.sh make-data --out data/demo)
  ./run.sh folds --data data/hotel-id
  ./run.sh train m1 --data data/hotel-id --folds all
  ./run.sh evaluate m1 --data data/hotel-id --oof
  ./run.sh ensemble m1 m2 --data data/hotel-id --folds all --out my_sub
  ./run.sh kernel my-kernel --models m1 m2 --data data/hotel-id --folds all  # offline Kaggle kernel, checked here
  ./run.sh upload my-kernel                   # datasets + kernel via the kaggle client, checked against Kaggle's list
  ./run.sh status my-kernel --wait            # until the kernel has run; its output -> kernels/my-kernel/output/
  ./run.sh submit my-kernel && ./run.sh status my-kernel --wait   # submitted, then its score
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
    if extra and hasattr(args, "pytest_args"):  # argparse leaves a leading option (test -k rank) out of REMAINDER
        args.pytest_args = extra + list(args.pytest_args)
    elif extra:
        bad = [x for x in extra if "=" not in x or x.startswith("-")]
        if bad or not hasattr(args, "overrides"):
            parser.parse_args(argv)  # argparse's own one-line usage error and exit 2
        args.overrides = list(args.overrides) + extra
    from pipeline.core.network import set_policy

    set_policy(online=args.stage in NETWORK)
    try:
        return args._module.run(args) or 0
    except UserError as e:
        from pipeline.core.distributed import report_error

        if not report_error(one_line(e)):  # a torchrun worker hands it to the launcher, which prints it once
            print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
