"""TensorBoard events of a training run, in its folder beside metrics.csv (`tensorboard --logdir runs`): per
optimiser step the loss and each parameter group's learning rate; at each epoch end every numeric cell of the
metrics row (so a column added later is logged too); at each validation a picture of a few val queries with their
top classes. On while the tensorboard package imports and the config says `tensorboard: true`; rank 0 alone writes.
The x axis is the optimiser step, and a writer opens with purge_step = the next step: a resumed run's events
replace what a killed one wrote after its last.pt, and a fresh run's hide an older run's in the same folder."""
import numbers

import numpy as np

QUERIES, MATCHES = 4, 3  # the picture: rows of a query and its top classes
CELL = 96  # pixels per image in the picture
_GREEN, _RED, _WHITE = (40, 200, 40), (220, 30, 30), (255, 255, 255)


class Logbook:
    """run: the training loop's run (training/loop.py's _Run): its config, folder, rank, state and optimiser."""

    def __init__(self, run):
        self.run, self.writer = run, None
        self.shown = {}  # validation's embeddings (queries, gallery) of the epoch, on rank 0: the picture's
        if run.rank or not run.cfg["tensorboard"]:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch says "TensorBoard logging requires TensorBoard ..." without the package
            run.log("tensorboard is not installed: no TensorBoard events (pip install tensorboard, or set "
                    "tensorboard: false to silence this)")
            return
        self.writer = SummaryWriter(str(run.out), purge_step=run.state["step"] + 1)

    def step(self, loss: float) -> None:
        """Before optimiser step state['step'] + 1 is taken: the loss of its last batch, the rates it uses."""
        if self.writer is None:
            return
        step = self.run.state["step"] + 1
        self.writer.add_scalar("train/loss", loss, step)
        for i, group in enumerate(self.run.opt.param_groups):
            self.writer.add_scalar(f"lr/{group.get('name', i)}", group["lr"], step)

    def epoch(self, row: dict) -> None:
        """The epoch's metrics row (its numeric cells; an unvalidated epoch's are empty) and, when validation left
        its embeddings in `shown`, the retrieval picture; flushed, so a kill loses no finished epoch."""
        shown, self.shown = self.shown, {}
        if self.writer is None:
            return
        step = self.run.state["step"]
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, step)
        if shown.get("queries") is not None and len(shown["queries"]) and len(shown["gallery"]):
            self.writer.add_image("val/retrievals", self.picture(shown["queries"], shown["gallery"]), step,
                                  dataformats="HWC")
        self.writer.flush()

    def picture(self, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """RGB uint8: a row per query (the same seeded few each epoch, so one watches them improve), the query then
        the best gallery image of each of its top classes, framed green for its own class and red otherwise,
        captioned with the class and the score. Drawn with OpenCV: a few milliseconds, no figure."""
        import cv2

        from pipeline.data.images import read_image
        from pipeline.reports.pictures import best_matches, pick_queries
        from pipeline.retrieval.rank import encode

        run = self.run
        picked = pick_queries(len(run.val_items), QUERIES, run.cfg["seed"])
        codes = encode([it.label for it in run.gallery], run.classes)
        classes, scores, rows = best_matches([np.asarray(queries)[picked]], [np.asarray(gallery)], codes, k=MATCHES)
        canvas = np.zeros((len(picked) * (CELL + 16), (1 + MATCHES) * CELL, 3), np.uint8)
        for r, q in enumerate(picked):
            truth = run.val_items[q].label
            cells = [(run.val_items[q].path, _WHITE, f"query {truth}")]
            cells += [(run.gallery[g].path, _GREEN if run.classes[c] == truth else _RED, f"{run.classes[c]} {s:.2f}")
                      for c, s, g in zip(classes[r], scores[r], rows[r])]
            for col, (path, color, caption) in enumerate(cells):
                img = read_image(path, CELL)  # decoded at a reduced JPEG scale where the file allows
                side = min(img.shape[:2])
                y, x = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2  # the centre square
                tile = cv2.resize(np.ascontiguousarray(img[y:y + side, x:x + side]), (CELL, CELL),
                                  interpolation=cv2.INTER_AREA)
                cv2.rectangle(tile, (1, 1), (CELL - 2, CELL - 2), color, 3)
                top, left = r * (CELL + 16), col * CELL
                canvas[top:top + CELL, left:left + CELL] = tile
                cv2.putText(canvas, caption[:16], (left + 2, top + CELL + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                            color, 1, cv2.LINE_AA)
        return canvas

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
