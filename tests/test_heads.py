"""Head/loss registry: every head trains a tiny real model; values and gradients match pytorch-metric-learning
or a hand computation in float64; build_head's wrapper and errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.model.heads import HEADS, ArcFace, CosFace, LossTransform, SubCenterArcFace, build_head, dynamic_margins

TOL = dict(atol=1e-5, rtol=1e-5)


def _cfg(head, loss_transform=0.0, sampler="random", repeats=2, target="predictions"):
    cfg = load_config("default", ["backbone=test_efficientnet", "pretrained=false", "embedding_dim=32",
                                  "neck_dropout=0.0", f"loss_transform_target={target}", "clip.context=8",
                                  "clip.width=16", "clip.layers=1", "clip.heads=2", "clip.normalize=true",
                                  "clip.temperature=0.1"])
    cfg.update(head=head, loss_transform=loss_transform, sampler=sampler)
    cfg["repeated_aug"]["repeats"] = repeats
    return cfg


def _grads(fn, emb, *params):
    """fn(emb) and its gradients w.r.t. emb (a fresh leaf) and the given parameters."""
    emb = emb.detach().clone().requires_grad_(True)
    loss = fn(emb)
    return loss.detach(), torch.autograd.grad(loss, [emb, *params])


def _close(a, b):
    """(value, grads) pairs agree to 1e-5."""
    torch.testing.assert_close(a[0], b[0], **TOL)
    for ga, gb in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(ga, gb, **TOL)


# --- every head (and each wrapped in LossTransform) fits a fixed batch ---

CASES = [(name, False) for name in HEADS] + [(name, True) for name in HEADS]


@pytest.mark.parametrize("name,wrapped", CASES, ids=[f"{n}{'+loss_transform' if w else ''}" for n, w in CASES])
def test_head_trains_tiny_model(name, wrapped):
    from pipeline.model.embedder import build_model

    torch.manual_seed(0)
    cfg = _cfg(name, loss_transform=0.1 if wrapped else 0.0, sampler="repeated_aug" if wrapped else "random")
    model, _ = build_model(cfg)
    head = build_head(cfg, 4, [4, 4, 4, 4])
    assert isinstance(head, LossTransform) == wrapped
    labels = torch.arange(4).repeat_interleave(4)  # 4 classes x 4 images
    if name == "clip":  # an image-text head trains on caption tokens: one caption per image (replicas share it)
        from pipeline.model.clip import tokenize

        labels = torch.from_numpy(tokenize([f"photo {i // (2 if wrapped else 1)} of hotel {i // 4}"
                                            for i in range(16)], 8))
    if wrapped:  # rows 2i, 2i+1: two noisy replicas of one image, as repeated_aug lays them out
        x = torch.randn(8, 3, 32, 32).repeat_interleave(2, dim=0)
        x = x + 0.1 * torch.randn_like(x)
    else:
        x = torch.randn(16, 3, 32, 32)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=1e-2)
    model.train(), head.train()
    history = []
    for _ in range(20):
        loss = head(model(x), labels)
        assert loss.dim() == 0 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[0] > 0
    assert history[-1] < 0.6 * history[0], history
    inner = getattr(head, "head", head)
    assert hasattr(head, "logits") == hasattr(inner, "logits") == (name not in ("supcon", "triplet", "clip"))
    if hasattr(head, "logits"):
        with torch.no_grad():
            assert head.logits(model(x)).shape == (16, 4)


# --- values and gradients (float64) ---

def _batch(b=12, d=8, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.arange(b) % c


def test_arcface_matches_pml():
    # pml's margin is in degrees (ours radians) and its W is (D, C) (ours (C, D)); pml 2.x applies the same
    # monotonic fallback (cos(theta) - m sin(m) past theta = pi - m), so both branches are compared
    emb, labels = _batch()
    s, m = 30.0, 0.2
    ours = ArcFace(8, 5, None, s=s, m=m).double()
    pml = pml_losses.ArcFaceLoss(num_classes=5, embedding_size=8, margin=math.degrees(m), scale=s).double()
    pml.W.data = ours.weight.detach().t().clone()
    w0 = F.normalize(ours.weight[labels[0]].detach(), dim=0)
    u = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u = F.normalize(u - (u @ w0) * w0, dim=0)
    theta = math.pi - m / 2  # row 0 in the fallback branch, away from acos's singular gradient at pi
    emb[0] = 2.0 * (math.cos(theta) * w0 + math.sin(theta) * u)
    target_theta = torch.acos(ours.logits(emb).gather(1, labels[:, None]))
    assert (target_theta > math.pi - m).sum() == 1 and (target_theta < math.pi - m - 0.01).sum() == len(emb) - 1
    a = _grads(lambda e: ours(e, labels), emb, ours.weight)
    b = _grads(lambda e: pml(e, labels), emb, pml.W)
    _close((a[0], (a[1][0], a[1][1].t())), b)


def test_cosface_matches_pml_and_hand():
    emb, labels = _batch()
    s, m = 64.0, 0.35
    ours = CosFace(8, 5, [1, 2, 3, 4, 5], s=s, m=m).double()  # class_counts accepted and ignored
    pml = pml_losses.CosFaceLoss(num_classes=5, embedding_size=8, margin=m, scale=s).double()
    pml.W.data = ours.loss.W.detach().clone()
    hand_w = ours.loss.W.detach().clone().requires_grad_(True)

    def hand(e):  # margin in cosine units, subtracted from the target cosine before scaling
        cos = F.normalize(e) @ F.normalize(hand_w, dim=0)
        return F.cross_entropy(s * (cos - m * F.one_hot(labels, 5)), labels)
    a = _grads(lambda e: ours(e, labels), emb, ours.loss.W)
    _close(a, _grads(lambda e: pml(e, labels), emb, pml.W))
    _close(a, _grads(hand, emb, hand_w))
    torch.testing.assert_close(ours.logits(emb), F.normalize(emb) @ F.normalize(hand_w.detach(), dim=0), **TOL)


def test_supcon_matches_hand():
    emb, labels = _batch(b=10, c=3)
    t = 0.07
    head = HEADS["supcon"](8, 3, None, temperature=t)

    def hand(e):
        n = F.normalize(e)
        sim = n @ n.t() / t
        rows = []
        for i in range(len(e)):
            others = [j for j in range(len(e)) if j != i]
            pos = [j for j in others if labels[j] == labels[i]]
            denom = torch.logsumexp(sim[i, others], dim=0)
            rows.append(-torch.stack([sim[i, j] - denom for j in pos]).mean())
        return torch.stack(rows).mean()  # every row has positives, so every loss is non-zero
    _close(_grads(lambda e: head(e, labels), emb), _grads(hand, emb))


def test_triplet_with_miner_matches_hand():
    emb, labels = _batch(b=10, c=3)
    margin = 0.2
    head = HEADS["triplet"](8, 3, None, margin=margin, miner=True)

    def violating(e):
        n = F.normalize(e)
        for a in range(len(e)):
            for p in range(len(e)):
                for q in range(len(e)):
                    if p != a and labels[p] == labels[a] and labels[q] != labels[a]:
                        v = (n[a] - n[p]).norm() - (n[a] - n[q]).norm() + margin
                        if v > 0:
                            yield (a, p, q), v

    found = dict(violating(emb))
    assert 0 < len(found) < 10 * 2 * 7  # some, not all, triplets violate the margin
    assert set(zip(*(i.tolist() for i in head.miner(emb, labels)))) == set(found)
    # the mean over violating triplets (pml's AvgNonZeroReducer; so miner=false gives the same value)
    hand = _grads(lambda e: torch.stack([v for _, v in violating(e)]).mean(), emb)
    _close(_grads(lambda e: head(e, labels), emb), hand)


def test_triplet_empty_miner_gives_zero_loss_with_grad():
    head = HEADS["triplet"](4, 2, None, margin=0.02, miner=True)
    emb = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 0]], requires_grad=True)
    loss = head(emb, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0 and loss.grad_fn is not None
    loss.backward()
    assert torch.all(emb.grad == 0)


def test_subcenter_k1_fixed_margin_matches_arcface():
    emb, labels = _batch()
    arc = ArcFace(8, 5, None, s=30.0, m=0.2).double()
    sub = SubCenterArcFace(8, 5, [3, 1, 4, 1, 5], s=30.0, k=1, dynamic=False, m=0.2).double()
    sub.weight.data.copy_(arc.weight.data)
    emb[0] = -3 * arc.weight[labels[0]].detach()  # theta = pi: the hard-margin branch
    assert (arc.logits(emb).gather(1, labels[:, None]) < math.cos(math.pi - 0.2)).any()
    _close(_grads(lambda e: arc(e, labels), emb, arc.weight), _grads(lambda e: sub(e, labels), emb, sub.weight))
    # it is that head: its margins come from the config, so its checkpoints hold the weight alone, as always
    assert isinstance(arc, SubCenterArcFace) and arc.k == 1 and list(arc.state_dict()) == ["weight"]
    assert set(sub.state_dict()) == {"weight", "margins", "cos_m", "sin_m", "th", "mm"}


def test_subcenter_logits_are_max_over_subcenters():
    emb, _ = _batch()
    sub = SubCenterArcFace(8, 5, None, k=3).double()
    cos = F.normalize(emb) @ F.normalize(sub.weight).t()  # (B, 15), row c*k + j
    expected = torch.stack([cos[:, 3 * c:3 * c + 3].max(dim=1).values for c in range(5)], dim=1)
    torch.testing.assert_close(sub.logits(emb), expected, **TOL)


def test_dynamic_margins_by_hand():
    # n^-1/4 = 1, 1/2, 1/3, 1/4 -> linear onto [0.05, 0.5]: smallest class m_max, largest m_min
    m = dynamic_margins([1, 16, 81, 256], 0.05, 0.5)
    torch.testing.assert_close(m, torch.tensor([0.5, 0.2, 0.1, 0.05], dtype=torch.float64), **TOL)
    assert torch.all(dynamic_margins([7, 7, 7], 0.05, 0.5) == 0.5)  # equal sizes: m_max
    torch.testing.assert_close(dynamic_margins([0, 1, 16], 0.1, 0.3),
                               torch.tensor([0.3, 0.3, 0.1], dtype=torch.float64), **TOL)  # empty class: m_max
    sub = SubCenterArcFace(8, 4, [1, 16, 81, 256], k=1, dynamic=True, m_min=0.05, m_max=0.5)
    torch.testing.assert_close(sub.margins, torch.tensor([0.5, 0.2, 0.1, 0.05]), **TOL)
    assert "margins" in sub.state_dict()


def test_subcenter_uses_each_class_margin():
    emb, _ = _batch(b=6, c=4)
    sub = SubCenterArcFace(8, 4, [1, 16, 81, 256], s=30.0, k=1, dynamic=True).double()
    for c, mc in enumerate([0.5, 0.2, 0.1, 0.05]):
        labels = torch.full((6,), c)
        arc = ArcFace(8, 4, None, s=30.0, m=mc).double()
        arc.weight.data = sub.weight.detach().clone()
        torch.testing.assert_close(sub(emb, labels), arc(emb, labels), **TOL)


def test_loss_transform_term_by_hand():
    emb, labels = _batch(b=12)
    inner = ArcFace(8, 5, None).double()
    lt = LossTransform(inner, replicas=3, weight=0.5, target="embeddings")

    def hand(e):
        n = F.normalize(e)
        dists = []
        for g in range(4):
            grp = n[3 * g:3 * g + 3]
            dists += [(grp[i] - grp.mean(dim=0)).norm() for i in range(3)]
        return inner(e, labels) + 0.5 * torch.stack(dists).mean()
    _close(_grads(lambda e: lt(e, labels), emb), _grads(hand, emb))
    torch.testing.assert_close(lt.logits(emb), inner.logits(emb))
    with pytest.raises(ValueError, match="replicas"):
        lt(emb[:10], labels[:10])
    same = emb[:2].repeat_interleave(3, dim=0).requires_grad_(True)  # exact replicas: zero term, finite grad
    LossTransform(inner, 3, 1.0, target="embeddings").replica_term(same).backward()
    assert torch.isfinite(same.grad).all()


def _weight(head):
    """The head's class weight rows (C, D), the parameter its logits use."""
    return head.weight if isinstance(head, ArcFace) else head.loss.W


def _predictions_term_numpy(e, head, replicas):
    """mean_i KL(P_g(i) || p_i), p_i = softmax(scale * cos(e_i, w_c)), P_g the mean p of i's replica group."""
    w = _weight(head).detach().numpy()
    w = w if isinstance(head, ArcFace) else w.T  # pml's CosFace holds W as (D, C)
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    z = head.scale * n @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    mean = np.repeat(p.reshape(-1, replicas, p.shape[1]).mean(axis=1), replicas, axis=0)
    return (mean * np.log(mean / p)).sum(axis=1).mean()


def _predictions_term_torch(e, head, replicas, detach=True):
    """The same in torch, for its gradients; detach=False lets the gradient through the replicas' mean."""
    z = head.scale * head.logits(e)
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)
    mean = log_p.exp().reshape(-1, replicas, z.shape[1]).mean(dim=1).repeat_interleave(replicas, dim=0)
    mean = mean.detach() if detach else mean
    return (mean * (mean.log() - log_p)).sum(dim=1).mean()


@pytest.mark.parametrize("name", ["arcface", "cosface"])  # logit scales 30 and 64
def test_loss_transform_predictions_by_hand(name):
    emb, labels = _batch(b=12)
    inner = HEADS[name](8, 5, None).double()
    lt = LossTransform(inner, replicas=3, weight=0.5)
    assert lt.target == "predictions"
    w = _weight(inner)
    term = lt.replica_term(emb)
    assert term.item() > 1e-3
    np.testing.assert_allclose(term.item(), _predictions_term_numpy(emb.numpy(), inner, 3), rtol=1e-10)
    ours = _grads(lambda e: lt(e, labels), emb, w)
    _close(ours, _grads(lambda e: inner(e, labels) + 0.5 * _predictions_term_torch(e, inner, 3), emb, w))
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in ours[1])
    # the mean prediction is a detached soft target: a gradient through it would differ
    through_mean = _grads(lambda e: inner(e, labels) + 0.5 * _predictions_term_torch(e, inner, 3, False), emb, w)
    assert not torch.allclose(ours[1][0], through_mean[1][0], **TOL)
    same = emb[:4].repeat_interleave(3, dim=0)  # exact replicas: zero term, zero gradient
    value, grads = _grads(lt.replica_term, same, w)
    assert abs(value.item()) < 1e-12 and all(g.abs().max() < 1e-12 for g in grads)
    with pytest.raises(ValueError, match="replicas"):
        lt.replica_term(emb[:10])
    with pytest.raises(ValueError, match="target"):
        LossTransform(inner, 3, 0.5, target="logits")


# --- build_head ---

def test_build_head_wraps_and_passes_sections():
    cfg = _cfg("subcenter_arcface", loss_transform=0.25, sampler="repeated_aug", repeats=3)
    head = build_head(cfg, 4, [1, 16, 81, 256])
    assert isinstance(head, LossTransform) and head.replicas == 3 and head.weight == 0.25
    assert head.target == "predictions" and head.head.scale == cfg["subcenter_arcface"]["s"]
    assert isinstance(head.head, SubCenterArcFace) and head.head.weight.shape == (4 * cfg["subcenter_arcface"]["k"], 32)
    assert not hasattr(build_head(_cfg("supcon", 0.1, "repeated_aug"), 4), "logits")
    assert isinstance(build_head(_cfg("arcface"), 4, [1, 2, 3, 4]), ArcFace)


def test_build_head_loss_transform_target():
    assert load_config("default")["loss_transform_target"] == "predictions"
    # pair losses have no class predictions: "predictions" falls back to their embeddings
    for name, target, used in [("arcface", "embeddings", "embeddings"), ("cosface", "predictions", "predictions"),
                               ("triplet", "predictions", "embeddings"), ("supcon", "embeddings", "embeddings")]:
        assert build_head(_cfg(name, 0.1, "repeated_aug", target=target), 4).target == used, (name, target)
    cosface = build_head(_cfg("cosface", 0.1, "repeated_aug"), 4).head
    assert cosface.scale == cosface.loss.scale == 64.0  # the scale the term uses is the one pml's loss applies


@pytest.mark.parametrize("cfg,needle", [
    (_cfg("nope"), "known: arcface, cosface, subcenter_arcface, supcon, triplet"),
    (_cfg("arcface", loss_transform=0.1, sampler="random"), "sampler=repeated_aug"),
    (_cfg("arcface", loss_transform=0.1, sampler="repeated_aug", repeats=1), "repeats >= 2"),
    (_cfg("arcface", 0.1, "repeated_aug", target="logits"), "'logits' is not a target: set .* or embeddings"),
    (_cfg("triplet", target=3), "loss_transform_target='3' is not a target"),
], ids=["unknown_head", "loss_transform_without_repeated_aug", "loss_transform_one_repeat", "bad_target",
        "bad_target_unused"])
def test_build_head_errors(cfg, needle):
    with pytest.raises(UserError, match=needle) as e:
        build_head(cfg, 4)
    assert "\n" not in str(e.value)
