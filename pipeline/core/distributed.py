"""Several processes, one result: `--nproc N` relaunches a stage under torchrun (PyTorch DDP: NCCL on CUDA, gloo
on the CPU), and the helpers here let the stage's code run unchanged in one process or in N.

A worker is a process started by torchrun (RANK and WORLD_SIZE set). Rank 0 is the only one that writes files or
prints; the others compute their share. With one process every helper is a no-op, so single-process results are
exactly what they were before distribution existed.

A UserError raised in a worker started by `launch` is written to a file the launcher reads, so the user sees one
line, not N copies and torchrun's report of the failed child."""
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import torch

_T = TypeVar("_T")
ERROR_DIR = "PIPELINE_DDP_ERRORS"  # where workers of `launch` leave their one-line errors (rank<r>.txt)


def in_worker() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def world() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def is_main() -> bool:
    return rank() == 0


def main_only(log: Callable[..., object]) -> Callable[..., object]:
    """log on rank 0, a no-op on the others: N processes, one voice."""
    return log if is_main() else _silent


def _silent(*args, **kwargs):
    pass


def init() -> None:
    """Join the process group torchrun set up: NCCL with one GPU per process when CUDA is there, else gloo."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # "cuda" then means this process's GPU
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def finish() -> None:
    d = _dist()
    if d:
        import gc

        d.barrier()  # no rank leaves while rank 0 still writes what the others computed
        # a DDP wrapper the stage dropped still holds the process group in a reference cycle; freed only at exit,
        # gloo's threads would be torn down during interpreter shutdown, which aborts now and then
        gc.collect()
        d.destroy_process_group()


def broadcast(obj: _T) -> _T:
    """Rank 0's obj on every rank (a decision all ranks must take alike: best epoch, learning-rate cut)."""
    d = _dist()
    if not d:
        return obj
    box = [obj]
    d.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: _T) -> list[_T] | None:
    """Every rank's obj in rank order on rank 0 (None elsewhere); [obj] with one process."""
    d = _dist()
    if not d:
        return [obj]
    parts = [None] * d.get_world_size() if d.get_rank() == 0 else None
    d.gather_object(obj, parts, dst=0)
    return parts


def gather_in_order(local: Iterable[_T]) -> list[_T] | None:
    """Per-batch results of a sharded loop, back in the one-process order, on rank 0 (None elsewhere).
    `local` holds this rank's results for batches rank, rank + world, rank + 2 world, ... (see shard)."""
    parts = gather(list(local))
    if parts is None:
        return None
    n, w = sum(len(p) for p in parts), len(parts)
    return [parts[b % w][b // w] for b in range(n)]


def seed_rank(seed: int) -> None:
    """This rank's own random stream for what it draws alone (dropout and drop-path masks of its rows); called once
    the model and head are built, whose initial weights come from the one shared seed. Rank r > 0 reseeds with
    seed + r; rank 0 keeps the stream it has, so one process trains exactly as before per-rank streams. The batch
    plan (samplers, per-sample augmentation seeds) never reads these streams: it is the same for every N."""
    r = rank()
    if r:
        import torch

        torch.manual_seed(seed + r)  # the CPU generator and every GPU's


def shard(batches: Iterable[_T]) -> list[_T]:
    """This rank's batches of a sequence of batches: every world-th one, so each batch is computed exactly as one
    process would (same images, same batch shape) and gather_in_order can restore the order."""
    return list(batches)[rank()::world()]


def gather_batch(embeddings: "torch.Tensor", labels: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    """The whole global batch of embeddings and labels on every rank, in the one-process row order (this rank holds
    rows rank::world of it). The loss is then the one-process loss of the global batch: pair losses see every pair,
    LossTransform its whole replica groups, and margin heads every row. Only this rank's rows carry a gradient,
    scaled by world, because DDP averages gradients over the ranks."""
    import torch

    d = _dist()
    if not d or d.get_world_size() == 1:
        return embeddings, labels
    w, r = d.get_world_size(), d.get_rank()
    parts = [torch.empty_like(embeddings) for _ in range(w)]
    d.all_gather(parts, embeddings.detach().contiguous())
    # value exactly this rank's embeddings, gradient x world
    parts[r] = embeddings.detach() + (embeddings - embeddings.detach()) * w
    ys = [torch.empty_like(labels) for _ in range(w)]
    d.all_gather(ys, labels.contiguous())
    return torch.stack(parts, 1).flatten(0, 1), torch.stack(ys, 1).flatten(0, 1)


def wrap(module: "torch.nn.Module", device: str) -> "torch.nn.Module":
    """module in DistributedDataParallel when there are several processes (it averages the gradients), else itself."""
    if world() == 1:
        return module
    import torch
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[torch.cuda.current_device()] if device == "cuda" else None)


def sync_gradients(module: "torch.nn.Module", sync: bool) -> "AbstractContextManager":
    """Context for one backward: with sync False (a batch inside a gradient accumulation) DDP skips its all-reduce."""
    import contextlib

    return contextlib.nullcontext() if sync or not hasattr(module, "no_sync") else module.no_sync()


def report_error(message: str) -> bool:
    """In a worker of `launch`: leave the message for the launcher and say nothing (True). Otherwise False."""
    where = os.environ.get(ERROR_DIR)
    if not (where and in_worker()):
        return False
    Path(where, f"rank{int(os.environ['RANK']):05d}.txt").write_text(message)
    return True


def run_stage(nproc: int | None, argv: list[str], body: Callable[[], _T], same_threads: bool = False) -> _T | int:
    """body() in this process (no --nproc, or already a torchrun worker), or this command again under torchrun with
    nproc processes. nproc: the --nproc value (None = not given); argv: this command's arguments after ./run.sh;
    same_threads: see launch."""
    if nproc is not None and nproc < 1:
        raise UserError(f"--nproc {nproc}: give 1 or more processes")
    if in_worker():
        if nproc is not None and int(os.environ["WORLD_SIZE"]) != nproc:
            raise UserError(f"--nproc {nproc} but torchrun started {os.environ['WORLD_SIZE']} processes: "
                            "give the same number to both (or leave --nproc out under torchrun)")
        init()
        result = body()
        finish()
        return result
    if nproc and nproc > 1:
        return launch(argv, nproc, same_threads)
    return body()


def launch(argv: list[str], nproc: int, same_threads: bool = False) -> int:
    """`torchrun --standalone --nproc-per-node nproc -m pipeline argv`, with workers' one-line errors raised here.
    same_threads: CPU workers use one process's thread count (byte-identical results), not a share of the cores."""
    import logging
    import tempfile

    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s); one process per GPU")
    # torchrun would set 1 thread per process and warn; share the cores out instead. But a CPU kernel's rounding
    # can depend on its thread count: where the result must be byte-identical to one process's (embed), CPU
    # workers keep one process's thread count, oversubscribing the cores (on the CPU that is for checking only).
    threads = max(1, (os.cpu_count() or 1) // nproc)
    if same_threads and not torch.cuda.is_available():
        threads = torch.get_num_threads()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    print(f"torchrun: {nproc} processes ({backend}); rank 0 writes and reports", flush=True)
    # the agent logs each failed or stopped child at length; the error that matters comes back as one line
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # the workers run this command without --nproc (they know their world; torchrun's own parser would take it)
    argv = [a for i, a in enumerate(argv) if not a.startswith("--nproc") and not (i and argv[i - 1] == "--nproc")]
    with tempfile.TemporaryDirectory(prefix="pipeline-ddp-") as errors:
        os.environ[ERROR_DIR] = errors
        try:
            run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.2", "-m", "pipeline",
                            *argv]))
        except ChildFailedError as e:
            reports = sorted(Path(errors).glob("rank*.txt"))
            if reports:
                raise UserError(reports[0].read_text().strip()) from None
            r, failure = e.get_first_failure()
            raise UserError(f"torchrun: process rank {r} failed (exit code {failure.exitcode}); "
                            "its traceback is above") from None
        finally:
            del os.environ[ERROR_DIR]
    sys.stdout.flush()
    return 0
