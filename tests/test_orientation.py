"""Query orientation (retrieval/orientation.py, retrieval/forward.py rotation= / orient=): rotation TTA's merge
against a dense hand computation, and the self-supervised rotation head, trained for real on images whose only
orientation cue is a bright band at the top, turning rotated views back upright exactly."""
import cv2
import numpy as np
import pytest
import torch

from pipeline.core.errors import UserError

from conftest import TINY

N_IMAGES, SIDE = 40, 32


def _dense_top(S, k):
    """Hand top k of a (Q, C) score matrix: score descending, ties -> smaller class, -1 / -inf past C."""
    Q, C = S.shape
    codes, scores = np.full((Q, k), -1, np.int64), np.full((Q, k), -np.inf, np.float32)
    for q in range(Q):
        order = sorted(range(C), key=lambda c: (-S[q, c], c))[:k]
        codes[q, :len(order)], scores[q, :len(order)] = order, S[q, order]
    return codes, scores


@pytest.mark.parametrize("classes", [12, 3])
def test_merge_rotations_is_the_top_k_of_the_per_class_max(classes):
    from pipeline.retrieval.orientation import merge_rotations

    rng = np.random.default_rng(classes)
    S = (rng.integers(0, 6, (4, 30, classes)) / 5).astype(np.float32)  # few levels: many ties across classes
    tops = [_dense_top(s, 5) for s in S]
    codes, scores = merge_rotations([t[0] for t in tops], [t[1] for t in tops], 5)
    want_c, want_s = _dense_top(S.max(0), 5)
    assert codes.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(codes, want_c)
    np.testing.assert_array_equal(scores, want_s)
    assert (codes[:, 0] != tops[0][0][:, 0]).any()  # the other rotations do change some queries' best class


def _band_image(rng, side=SIDE):
    """Noise with a bright band along the top: upright has one reading, each quarter turn another."""
    img = rng.integers(0, 90, (side, side, 3), dtype=np.uint8)
    img[: side // 4] = rng.integers(200, 256, (side // 4, side, 3), dtype=np.uint8)
    return img


def _write(folder, images, tag):
    from pipeline.data.layouts import Item

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, img in enumerate(images):
        path = folder / f"{tag}{i}.png"  # lossless: the files hold exactly the pixels turned by hand
        cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
        items.append(Item(f"{tag}{i}", path, "h"))
    return items


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny 32 px batches gain nothing from intra-op threads, and with the other core busy OpenMP's barriers stall
    (a forward of 8 images: 2 ms on one thread, 0.4 s on two, on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def oriented(tmp_path_factory):
    """A tiny random-init timm model, band images, and the run's orienter trained by ensure_orienter."""
    from pipeline.config import load_config
    from pipeline.model.embedder import build_model
    from pipeline.retrieval.orientation import ensure_orienter

    cfg = load_config("default", TINY)
    torch.manual_seed(0)
    model, _ = build_model(cfg, with_weights=False)
    model.eval()
    root = tmp_path_factory.mktemp("orient")
    rng = np.random.default_rng(0)
    items = _write(root / "train", [_band_image(rng) for _ in range(N_IMAGES)], "t")
    lines = []
    orienter = ensure_orienter(cfg, model, items, None, "cpu", root / "run", "hash-a", log=lines.append)
    return {"cfg": cfg, "model": model, "items": items, "root": root, "rng": rng, "orienter": orienter,
            "lines": lines}


def test_orienter_turns_any_rotation_back_upright(oriented):
    assert any("held-out accuracy 1.0000" in line for line in oriented["lines"]), oriented["lines"]
    x = torch.from_numpy(np.stack([_band_image(oriented["rng"]).transpose(2, 0, 1) for _ in range(8)]))
    for k in range(4):
        turned = torch.rot90(x, k, (2, 3))
        assert oriented["orienter"].predict(turned).tolist() == [k] * len(x)
        assert torch.equal(oriented["orienter"](turned), x)


def test_rotation_and_orient_in_embed_items_match_the_turned_images(oriented):
    from pipeline.data.transforms import build_transform
    from pipeline.retrieval.forward import embed_items

    cfg, model, items = oriented["cfg"], oriented["model"], oriented["items"][:6]
    tfm = build_transform("test", cfg, SIDE)
    images = [cv2.cvtColor(cv2.imread(str(it.path)), cv2.COLOR_BGR2RGB) for it in items]
    upright = embed_items(model, items, tfm, cfg, "cpu", flip=True)[0]
    for k in (1, 2, 3):
        turned = _write(oriented["root"] / f"rot{k}", [np.rot90(im, k) for im in images], f"r{k}_")
        by_hand = embed_items(model, turned, tfm, cfg, "cpu", flip=True)[0]
        np.testing.assert_array_equal(embed_items(model, items, tfm, cfg, "cpu", flip=True, rotation=k)[0], by_hand)
        assert not np.array_equal(by_hand, upright)  # a turn changes the embedding: the check above has teeth
        np.testing.assert_array_equal(
            embed_items(model, turned, tfm, cfg, "cpu", flip=True, orient=oriented["orienter"])[0], upright)
    with pytest.raises(UserError, match="rotation 4"):
        embed_items(model, items, tfm, cfg, "cpu", rotation=4)


def test_rotation_in_embed_multicrop_turns_each_crop(oriented):
    """Five crops of a square image are symmetric under a half turn: corner crops swap with the opposite corner, so
    the crops of the image turned 180 degrees, each turned back, are the upright image's crops (in another order,
    hence to rounding)."""
    from pipeline.data.transforms import MultiCrop
    from pipeline.retrieval.forward import embed_multicrop

    cfg, model, items = oriented["cfg"], oriented["model"], oriented["items"][:6]
    images = [cv2.cvtColor(cv2.imread(str(it.path)), cv2.COLOR_BGR2RGB) for it in items]
    turned = _write(oriented["root"] / "mc180", [np.rot90(im, 2) for im in images], "m")
    mc = MultiCrop("test", 5, SIDE)
    upright = embed_multicrop(model, items, mc, cfg, "cpu").astype(np.float32)
    plain = embed_multicrop(model, turned, mc, cfg, "cpu").astype(np.float32)
    back = embed_multicrop(model, turned, mc, cfg, "cpu", rotation=2).astype(np.float32)
    err, moved = np.abs(back - upright).max(), np.abs(plain - upright).max()
    assert err <= 2e-3 and moved > 5 * max(err, 1e-3), (err, moved)


def test_ensure_orienter_reuses_its_head_for_the_same_checkpoint_and_retrains_for_another(oriented):
    from pipeline.retrieval.orientation import FILE, ensure_orienter

    cfg, model, items, run = oriented["cfg"], oriented["model"], oriented["items"], oriented["root"] / "run"
    path = run / FILE
    before = path.stat().st_mtime_ns
    lines = []
    again = ensure_orienter(cfg, model, items, None, "cpu", run, "hash-a", log=lines.append)
    assert path.stat().st_mtime_ns == before and not any("images x 4 turns" in line for line in lines), lines
    for name, value in oriented["orienter"].state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    assert "model." not in " ".join(again.state_dict())  # the run's model is not saved twice
    lines = []
    ensure_orienter(cfg, model, items, None, "cpu", run, "hash-b", log=lines.append)
    assert any("images x 4 turns" in line for line in lines), lines
    assert torch.load(path, weights_only=True)["checkpoint_sha256"] == "hash-b"
