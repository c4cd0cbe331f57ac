"""pipeline/core/progress.py off a terminal: at most one line per period with count, share, rate and eta, then one final
line; a resume's done units are left out of the rate; silent when disabled or on other ranks."""
from pipeline.core.progress import Progress, duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_lines_every_period_and_a_final_line():
    clock, lines = Clock(), []
    bar = Progress(5000, "embedding m1 test", log=lines.append, every=30, clock=clock, terminal=False)
    for t, n in ((10, 400), (34.2, 800), (40, 500), (70, 1000)):  # 1200 images by 34.2 s: the first line
        clock.t = 100 + t
        bar(n)
    assert lines == ["embedding m1 test: 1200/5000 images (24%), 35 img/s, eta 1m48s",
                     "embedding m1 test: 2700/5000 images (54%), 39 img/s, eta 1m00s"]
    clock.t = 100 + 143
    bar(2300)  # the total: the final line, once
    bar(10)
    bar.close()
    assert lines[2:] == ["embedding m1 test: 5000/5000 images (100%), 35 img/s, done in 2m23s"]


def test_iterable_resume_note_and_quiet_end():
    clock, lines = Clock(), []
    bar = Progress(10, "epoch 2/3", "batches", lines.append, iterable=range(6), done=4, every=0, final=False,
                   clock=clock, terminal=False)
    for i in bar:
        clock.t += 2.0
        bar.note = f"loss {1 / (i + 1):.3f}"
    # the rate counts this run's batches only; final=False: the caller's own line ends it
    assert lines[0] == "epoch 2/3: 5/10 batches (50%), 0.5 batches/s, eta 10s, loss 1.000"
    assert lines[-1] == "epoch 2/3: 9/10 batches (90%), 0.5 batches/s, eta 2.0s, loss 0.200"
    assert len(lines) == 5
    silent = []
    for _ in Progress(3, "rank 1", log=silent.append, iterable=range(3), every=0, enabled=False, terminal=False):
        pass
    assert silent == []


def test_duration():
    assert [duration(s) for s in (0.44, 9.96, 35.2, 59.6, 108, 3599.4, 7380)] == \
        ["0.4s", "10.0s", "35s", "1m00s", "1m48s", "59m59s", "2h03m"]
