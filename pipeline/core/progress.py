"""Progress of a long loop (training epochs, embedding, validation, ensembling, the Kaggle kernel): a tqdm bar on
stderr when stderr is a terminal; elsewhere (CI, a log file, Kaggle's log) plain lines, at most one every `every`
seconds and a final one, e.g.

  embedding m1 test: 1200/5000 images (24%), 35 img/s, eta 1m48s
  embedding m1 test: 5000/5000 images (100%), 35 img/s, done in 2m23s

One Progress is both a loop's iterable wrapper (`for x in Progress(n, what, iterable=xs)`) and the `progress(n)`
hook of the embedding code; it closes itself when its count reaches the total."""
import sys
import time
from collections.abc import Callable, Iterable, Iterator

EVERY = 30.0  # seconds between two progress lines in a log


def duration(seconds: float) -> str:
    """'0.4s', '35s', '1m48s', '2h03m'."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Progress:
    """`total` units of work named `what`; done: units already done (a resume's), left out of the rate. log: where
    the lines go (default stderr); final: end with a line (False where the caller reports the end itself); enabled
    False: silent (the ranks of torchrun but 0). note: text appended to each line and to the bar (e.g. the loss).
    clock and terminal are for tests."""

    def __init__(self, total: int, what: str, unit: str = "images", log: Callable[[str], object] | None = None,
                 iterable: Iterable | None = None, done: int = 0, every: float = EVERY, final: bool = True,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic, terminal: bool | None = None):
        self.total, self.what, self.unit, self.n, self.first = total, what, unit, done, done
        self.iterable, self.every, self.final, self.clock, self.log = iterable, every, final, clock, log or _stderr
        self.note, self.bar = "", None
        self.start = self.last = clock()
        self.closed = not enabled or done >= total  # nothing (left) to do: no bar, no line
        if not self.closed and (sys.stderr.isatty() if terminal is None else terminal):
            from tqdm import tqdm  # only where a bar is drawn: the kernel's log never needs it

            self.bar = tqdm(total=total, initial=done, desc=what, unit=self.rate_unit, leave=False, file=sys.stderr,
                            dynamic_ncols=True)

    @property
    def rate_unit(self) -> str:
        return "img" if self.unit == "images" else self.unit

    def __call__(self, n: int = 1) -> None:
        """n more units done."""
        if self.closed:
            return
        self.n += n
        if self.bar is not None:
            if self.note:
                self.bar.set_postfix_str(self.note, refresh=False)
            self.bar.update(n)
        elif self.n < self.total and self.clock() - self.last >= self.every:
            self.last = self.clock()
            self.log(self.line())
        if self.n >= self.total:
            self.close()

    def __iter__(self) -> Iterator:
        """The iterable's items, each counted as one unit once the loop's body is done with it."""
        for item in self.iterable:
            yield item
            self(1)
        self.close()

    def line(self, final: bool = False) -> str:
        elapsed = self.clock() - self.start
        rate = (self.n - self.first) / elapsed if elapsed > 0 else 0.0
        n = min(self.n, self.total)  # torchrun's rank 0 counts its batches times the world: the last may overshoot
        if final:
            tail = f"done in {duration(elapsed)}"
        else:
            tail = f"eta {duration((self.total - n) / rate)}" if rate > 0 else "eta ?"
        speed = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"
        return (f"{self.what}: {n}/{self.total} {self.unit} ({n / self.total:.0%}), {speed} {self.rate_unit}/s, "
                f"{tail}" + (f", {self.note}" if self.note else ""))

    def close(self) -> None:
        """The end: the bar goes, or the final line is written; once."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.final:
            self.log(self.line(final=True))
