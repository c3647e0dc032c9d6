"""GLUS training losses: mask BCE / Dice, the object contrastive loss and its bank, the weighted total."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from glus.model.losses import (
    ContrastiveConfig,
    GLUSLossWeights,
    ObjectContrastiveLoss,
    SegEmbeddingBank,
    SegEntryMeta,
    combine_losses,
    dice_loss,
    mask_losses,
    object_contrastive_loss,
    object_set_key,
    sigmoid_bce_loss,
)

# ------------------------------------------------------------------ mask losses, by hand in numpy


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _np_dice(x: np.ndarray, t: np.ndarray, num_masks: float, scale: float = 1000.0, eps: float = 1e-6) -> float:
    total = 0.0
    for xn, tn in zip(x, t):
        p = _np_sigmoid(xn.astype(np.float64))
        num = 2.0 * np.sum(p * tn) / scale
        den = np.sum(p) / scale + np.sum(tn) / scale
        total += 1.0 - (num + eps) / (den + eps)
    return total / (num_masks + 1e-8)


def _np_bce(x: np.ndarray, t: np.ndarray, num_masks: float) -> float:
    total = 0.0
    for xn, tn in zip(x, t):
        p = _np_sigmoid(xn.astype(np.float64))
        total += np.mean(-(tn * np.log(p) + (1 - tn) * np.log(1 - p)))
    return total / (num_masks + 1e-8)


def _small_masks(seed: int, n: int = 3, h: int = 4, w: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, h, w))
    targets = (rng.random((n, h, w)) > 0.6).astype(np.float64)
    targets[-1] = 0.0  # one empty target: Dice must stay finite and near its eps-limit
    return logits, targets


def test_dice_matches_hand_computation():
    x, t = _small_masks(0)
    got = dice_loss(torch.from_numpy(x), torch.from_numpy(t), num_masks=3)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_np_dice(x, t, 3), rel=1e-12)
    # the hand numbers for one 1x2 mask: p = (0.5, sigmoid(2)), t = (1, 0)
    p1 = 1 / (1 + np.exp(-2.0))
    expect = 1 - (2 * 0.5 / 1000 + 1e-6) / ((0.5 + p1) / 1000 + 1 / 1000 + 1e-6)
    one = dice_loss(torch.tensor([[[0.0, 2.0]]]), torch.tensor([[[1.0, 0.0]]]), num_masks=1)
    assert one.item() == pytest.approx(expect / (1 + 1e-8), rel=1e-6)


def test_dice_scale_and_eps_are_used():
    x, t = _small_masks(1)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    assert dice_loss(xt, tt, 3, scale=1.0).item() == pytest.approx(_np_dice(x, t, 3, scale=1.0), rel=1e-12)
    assert dice_loss(xt, tt, 3, eps=1e-2).item() == pytest.approx(_np_dice(x, t, 3, eps=1e-2), rel=1e-12)
    assert dice_loss(xt, tt, 3, eps=1e-2).item() != pytest.approx(dice_loss(xt, tt, 3).item(), rel=1e-9)


def test_bce_matches_hand_computation():
    x, t = _small_masks(2)
    got = sigmoid_bce_loss(torch.from_numpy(x), torch.from_numpy(t), num_masks=3)
    assert got.item() == pytest.approx(_np_bce(x, t, 3), rel=1e-12)
    # num_masks is the divisor, not the count of masks
    assert sigmoid_bce_loss(torch.from_numpy(x), torch.from_numpy(t), num_masks=6).item() == pytest.approx(
        _np_bce(x, t, 6), rel=1e-12
    )


def test_mask_losses_normalise_over_all_masks_of_the_batch():
    # groups of different sizes and resolutions, as GLUS has per (sample, query frame)
    groups = [_small_masks(3, n=2, h=4, w=6), _small_masks(4, n=3, h=5, w=3), _small_masks(5, n=1, h=2, w=2)]
    preds = [torch.from_numpy(x) for x, _ in groups]
    gts = [torch.from_numpy(t).bool() for _, t in groups]
    bce, dice = mask_losses(preds, gts)
    n_total = sum(len(x) for x, _ in groups)
    bce_ref = sum(_np_bce(x, t, len(x)) * len(x) for x, t in groups) / (n_total + 1e-8)
    dice_ref = sum(_np_dice(x, t, len(x)) * len(x) for x, t in groups) / (n_total + 1e-8)
    assert bce.item() == pytest.approx(bce_ref, rel=1e-12)
    assert dice.item() == pytest.approx(dice_ref, rel=1e-12)
    # this is the plain mean over the six masks (the 1e-8 terms aside)
    per_mask = [_np_bce(x[i : i + 1], t[i : i + 1], 1) for x, t in groups for i in range(len(x))]
    assert bce.item() == pytest.approx(np.mean(per_mask), rel=1e-7)


def test_mask_losses_reject_bad_input():
    x = torch.zeros(2, 3, 3)
    with pytest.raises(ValueError):
        mask_losses([x], [])
    with pytest.raises(ValueError):
        mask_losses([], [])
    with pytest.raises(ValueError):
        dice_loss(x, torch.zeros(2, 3, 4), 2)


def test_low_precision_logits_are_computed_in_float32_with_gradients():
    x, t = _small_masks(6, n=2, h=32, w=32)
    logits = torch.from_numpy(x).to(torch.bfloat16).requires_grad_(True)
    bce, dice = mask_losses([logits], [torch.from_numpy(t)])
    assert bce.dtype == torch.float32 and dice.dtype == torch.float32
    xr = logits.detach().double().numpy()  # the bf16-rounded logits
    assert bce.item() == pytest.approx(_np_bce(xr, t, 2), rel=1e-5)
    assert dice.item() == pytest.approx(_np_dice(xr, t, 2), rel=1e-5)
    (bce + dice).backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16 and logits.grad.abs().sum() > 0


def test_combine_losses_weights_and_skipped_contrastive():
    ce, bce, dice, con = (torch.tensor(v) for v in (1.5, 0.25, 0.75, 2.0))
    out = combine_losses(ce, bce, dice, con)
    assert set(out) == {"ce", "bce", "dice", "contrastive", "total"}
    assert out["bce"].item() == pytest.approx(0.5) and out["dice"].item() == pytest.approx(0.375)
    assert out["contrastive"].item() == pytest.approx(0.2)
    assert out["total"].item() == pytest.approx(1.5 + 0.5 + 0.375 + 0.2)
    skipped = combine_losses(ce, bce, dice, None)
    assert skipped["contrastive"].item() == 0.0
    assert skipped["total"].item() == pytest.approx(1.5 + 0.5 + 0.375)
    w = GLUSLossWeights(ce=0.0, bce=1.0, dice=1.0, contrastive=1.0)
    assert combine_losses(ce, bce, dice, con, w)["total"].item() == pytest.approx(0.25 + 0.75 + 2.0)
    assert GLUSLossWeights() == GLUSLossWeights(ce=1.0, bce=2.0, dice=0.5, contrastive=0.1)


# ------------------------------------------------------------------ contrastive loss

D = 8


def _meta(video: str, exp: str, objs: list[int], frame: str, dataset: str = "mevis") -> SegEntryMeta:
    return SegEntryMeta(video=video, expression=exp, objects=object_set_key(objs), frame=frame, dataset=dataset)


def _filled_bank(n_other: int, seed: int = 0, capacity: int = 512) -> SegEmbeddingBank:
    """A bank with ``n_other`` entries of other videos plus, in video v1, entries of expressions
    "0" (objects {1}), "1" (objects {1}, the positive partner of "0"), "2" (objects {2}, a hard negative),
    at frames "00000" and "00001"."""
    g = torch.Generator().manual_seed(seed)
    bank = SegEmbeddingBank(capacity)
    metas = [_meta(f"o{i % 7}", str(i % 3), [i % 2], f"{i % 4:05d}") for i in range(n_other)]
    for exp, objs in (("0", [1]), ("1", [1]), ("2", [2])):
        for fr in ("00000", "00001"):
            metas.append(_meta("v1", exp, objs, fr))
    bank.push(torch.randn(len(metas), D, generator=g), metas)
    return bank


def _np_infonce(a: np.ndarray, cands: np.ndarray, tau: float) -> float:
    """-log(exp(cos(a,p)/tau) / (exp(cos(a,p)/tau) + sum_k exp(cos(a,n_k)/tau))), cands[0] = p."""
    cos = cands @ a / (np.linalg.norm(cands, axis=1) * np.linalg.norm(a))
    e = np.exp(cos / tau)
    return float(-np.log(e[0] / (e[0] + e[1:].sum())))


def test_contrastive_loss_equals_hand_computation():
    bank = _filled_bank(140)
    anchors = torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    metas = [_meta("v1", "0", [1], "00000"), _meta("v1", "2", [2], "00001"), _meta("v1", "1", [1], "00001")]
    cfg = ContrastiveConfig(update_bank_first=False)
    snapshot = bank.embeddings().double().numpy()
    res = object_contrastive_loss(anchors, metas, bank, cfg, torch.Generator().manual_seed(0))
    assert not res.skipped
    # expression "2" (objects {2}) has no partner in v1 -> not an anchor
    assert res.anchor_indices.tolist() == [0, 2]
    assert res.bank_indices.shape == (2, 129)
    expect = np.mean(
        [
            _np_infonce(anchors[row].numpy(), snapshot[res.bank_indices[k].numpy()], 0.07)
            for k, row in enumerate(res.anchor_indices.tolist())
        ]
    )
    assert res.loss.item() == pytest.approx(expect, rel=1e-10)
    assert len(bank) == 140 + 6 + 3  # pushed after the loss


def test_contrastive_loss_with_forced_draws():
    """One positive and identical negatives make the value independent of the random draws."""
    pos = torch.tensor([1.0, 0.0, 0.0, 0.0])
    neg = torch.tensor([0.6, 0.8, 0.0, 0.0])  # cos with the anchor below: 0.6
    bank = SegEmbeddingBank()
    metas = [_meta("v", "1", [3], "f")] + [_meta(f"w{i}", "0", [3], "f") for i in range(130)]
    bank.push(torch.stack([pos] + [neg] * 130), metas)
    anchors = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    a_metas = [_meta("v", "0", [3], "f"), _meta("v", "2", [3], "f")]
    cfg = ContrastiveConfig(update_bank_first=False, temperature=0.5, min_anchors=1)
    res = object_contrastive_loss(anchors, a_metas, bank, cfg)

    def hand(cp: float, cn: float) -> float:
        return -np.log(np.exp(cp / 0.5) / (np.exp(cp / 0.5) + 128 * np.exp(cn / 0.5)))

    s = 1 / np.sqrt(2)
    expect = (hand(1.0, 0.6) + hand(s, s * 1.4)) / 2
    assert res.loss.item() == pytest.approx(expect, rel=1e-6)


def test_candidate_rules_positive_and_negatives():
    bank = _filled_bank(200)
    metas_before = bank.metas
    anchors = torch.randn(2, D)
    a_metas = [_meta("v1", "0", [1], "00000"), _meta("v1", "1", [1], "00001")]
    res = object_contrastive_loss(anchors, a_metas, bank, ContrastiveConfig(update_bank_first=False))
    assert res.num_anchors == 2
    for k, row in enumerate(res.anchor_indices.tolist()):
        a = a_metas[row]
        p = metas_before[res.bank_indices[k, 0]]
        assert (p.video, p.objects, p.frame) == (a.video, a.objects, a.frame) and p.expression != a.expression
        negs = [metas_before[i] for i in res.bank_indices[k, 1:].tolist()]
        assert not any(n.video == a.video and n.expression == a.expression for n in negs)
        assert not any((n.video, n.objects, n.frame, n.expression) == (p.video, p.objects, p.frame, p.expression)
                       for n in negs)
    res2 = object_contrastive_loss(
        anchors, a_metas, bank, ContrastiveConfig(update_bank_first=False, negatives_exclude_same_objects=True)
    )
    for k in range(res2.num_anchors):
        negs = [metas_before[i] for i in res2.bank_indices[k, 1:].tolist()]
        assert not any(n.video == "v1" and n.objects == object_set_key([1]) for n in negs)


def test_partner_entries_at_other_frames_are_negatives_unless_excluded():
    """Released behaviour: the same object set at another frame counts as a candidate negative."""
    bank = SegEmbeddingBank()
    metas = [_meta("v", "1", [1], "f0"), _meta("v", "1", [1], "f1")] + [_meta(f"o{i}", "0", [0], "f0")
                                                                        for i in range(127)]
    bank.push(torch.randn(len(metas), D), metas)
    anchor, a_meta = torch.randn(1, D), [_meta("v", "0", [1], "f0")]
    released = ContrastiveConfig(update_bank_first=False, min_anchors=1)
    res = object_contrastive_loss(anchor, a_meta, bank, released)
    assert not res.skipped  # 127 other videos + the partner at f1 = 128 candidates
    assert res.bank_indices[0, 0].item() == 0
    excluded = ContrastiveConfig(update_bank_first=False, min_anchors=1, negatives_exclude_same_objects=True)
    assert object_contrastive_loss(anchor, a_meta, bank, excluded).skipped


def test_hard_negatives_of_the_same_video_are_candidates():
    """Entries of another expression of the same video (another object set) are negatives."""
    bank = SegEmbeddingBank()
    metas = [_meta("v", "1", [1], "f")] + [_meta("v", "2", [2], "f")] * 128
    bank.push(torch.randn(129, D), metas)
    res = object_contrastive_loss(
        torch.randn(1, D), [_meta("v", "0", [1], "f")], bank, ContrastiveConfig(update_bank_first=False, min_anchors=1)
    )
    assert not res.skipped and res.bank_indices[0, 0].item() == 0
    drawn = res.bank_indices[0, 1:].tolist()
    assert set(drawn) <= set(range(1, 129))
    assert len(set(drawn)) < 128  # with replacement: 128 draws from 128 candidates repeat some


def test_skip_rules():
    cfg = ContrastiveConfig(update_bank_first=False)
    a_metas = [_meta("v1", "0", [1], "00000"), _meta("v1", "1", [1], "00000")]
    anchors = torch.randn(2, D)
    # candidates: other videos + v1's other expression entries (minus positives); exactly 128 -> computed
    n_other = 128 - 3  # each anchor also has 3 same-video candidates (its partner at 00001, exp "2" x2)
    res = object_contrastive_loss(anchors, a_metas, _filled_bank(n_other), cfg)
    assert not res.skipped and res.num_anchors == 2
    res = object_contrastive_loss(anchors, a_metas, _filled_bank(n_other - 1), cfg)
    assert res.skipped and res.num_anchors == 0 and res.loss.item() == 0.0
    # no positive in the bank: skipped
    res = object_contrastive_loss(torch.randn(1, D), [_meta("v9", "0", [1], "x")], _filled_bank(300), cfg)
    assert res.skipped
    # a single contributing anchor is dropped by the released rule (count > 1), kept with min_anchors=1
    one = [_meta("v1", "0", [1], "00000")]
    res = object_contrastive_loss(anchors[:1], one, _filled_bank(300), cfg)
    assert res.skipped and res.num_anchors == 1 and res.loss.item() == 0.0
    keep_one = ContrastiveConfig(update_bank_first=False, min_anchors=1)
    res = object_contrastive_loss(anchors[:1], one, _filled_bank(300), keep_one)
    assert not res.skipped and res.loss.item() > 0


def test_bank_update_before_loss_gives_in_batch_positives():
    anchors = torch.randn(2, D)
    a_metas = [_meta("v2", "0", [4], "00003"), _meta("v2", "5", [4], "00003")]  # partners, not in the bank
    first = object_contrastive_loss(anchors, a_metas, _filled_bank(200), ContrastiveConfig())
    assert not first.skipped and first.num_anchors == 2
    bank = _filled_bank(200)
    n0 = len(bank)
    later = object_contrastive_loss(anchors, a_metas, bank, ContrastiveConfig(update_bank_first=False))
    assert later.skipped and len(bank) == n0 + 2


def test_other_datasets_neither_enter_the_bank_nor_anchor():
    bank = _filled_bank(200)
    n0 = len(bank)
    metas = [_meta("v1", "0", [1], "00000", dataset="refytvos"), _meta("v1", "1", [1], "00000", dataset="refytvos")]
    res = object_contrastive_loss(torch.randn(2, D), metas, bank)
    assert res.skipped and res.num_anchors == 0 and len(bank) == n0
    res = object_contrastive_loss(torch.randn(2, D), metas, bank, ContrastiveConfig(datasets=None))
    assert len(bank) == n0 + 2


def test_fifo_capacity():
    bank = SegEmbeddingBank(capacity=512)
    for step in range(5):
        emb = torch.arange(step * 130, (step + 1) * 130, dtype=torch.float32)[:, None].repeat(1, 4)
        bank.push(emb, [_meta("v", str(step * 130 + i), [0], "f") for i in range(130)])
    assert len(bank) == 512
    assert bank.metas[0].expression == str(650 - 512) and bank.metas[-1].expression == "649"
    assert bank.embeddings()[0, 0].item() == 650 - 512
    with pytest.raises(ValueError):
        SegEmbeddingBank(0)
    with pytest.raises(ValueError):
        bank.push(torch.zeros(2, 5), [_meta("v", "x", [0], "f")] * 2)  # wrong width


def test_gradients_reach_anchors_only():
    bank = SegEmbeddingBank()
    stored = torch.randn(200, D, requires_grad=True)
    metas = [_meta("v1", "1", [1], "f")] + [_meta(f"o{i}", "0", [0], "f") for i in range(199)]
    bank.push(stored * 2, metas)
    assert not bank.embeddings().requires_grad
    anchors = torch.randn(3, D, requires_grad=True)
    a_metas = [_meta("v1", "0", [1], "f"), _meta("v1", "2", [1], "f"), _meta("zz", "0", [9], "f")]
    res = object_contrastive_loss(anchors, a_metas, bank)
    assert not res.skipped and res.anchor_indices.tolist() == [0, 1]
    res.loss.backward()
    assert stored.grad is None
    assert anchors.grad[0].abs().sum() > 0 and anchors.grad[1].abs().sum() > 0
    assert anchors.grad[2].abs().sum() == 0  # no positive: not an anchor


def test_reproducible_and_resumable_state():
    anchors = torch.randn(4, D, generator=torch.Generator().manual_seed(5))
    a_metas = [_meta("v1", "0", [1], "00000"), _meta("v1", "1", [1], "00000"),
               _meta("v1", "0", [1], "00001"), _meta("v1", "1", [1], "00001")]

    def fresh() -> ObjectContrastiveLoss:
        loss = ObjectContrastiveLoss(seed=3)
        loss.bank = _filled_bank(300)
        return loss

    a, b = fresh(), fresh()
    ra, rb = a(anchors, a_metas), b(anchors, a_metas)
    assert torch.equal(ra.bank_indices, rb.bank_indices) and ra.loss.item() == rb.loss.item()

    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    resumed = ObjectContrastiveLoss(seed=99)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert len(resumed.bank) == len(a.bank) and resumed.bank.metas == a.bank.metas
    next_a, next_r = a(anchors, a_metas), resumed(anchors, a_metas)
    assert torch.equal(next_a.bank_indices, next_r.bank_indices)
    assert next_a.loss.item() == pytest.approx(next_r.loss.item(), rel=1e-6)
    # a differently seeded generator draws other negatives
    other = ObjectContrastiveLoss(seed=4)
    other.bank = _filled_bank(300)
    assert not torch.equal(other(anchors, a_metas).bank_indices, ra.bank_indices)


def test_empty_bank_state_round_trip():
    bank = SegEmbeddingBank(16)
    state = bank.state_dict()
    restored = SegEmbeddingBank()
    restored.load_state_dict(state)
    assert len(restored) == 0 and restored.capacity == 16


def test_object_set_key_is_order_free():
    assert object_set_key(["3", 1]) == object_set_key([1, 3]) == "1,3"
    assert object_set_key([1]) != object_set_key([1, 3])


_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _DEVICES)
def test_bf16_anchors_on_any_device(device):
    """bf16 embeddings (the full-size training dtype) give a float32 loss and bf16 gradients on the device."""
    bank = _filled_bank(200)
    bank.load_state_dict(
        {**bank.state_dict(), "embeddings": bank.state_dict()["embeddings"].to(torch.bfloat16)}, device=device
    )
    anchors = torch.randn(2, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    a_metas = [_meta("v1", "0", [1], "00000"), _meta("v1", "1", [1], "00001")]
    ref_bank = _filled_bank(200)  # float32 copy for the reference value
    res = object_contrastive_loss(anchors, a_metas, bank, ContrastiveConfig(update_bank_first=False),
                                  torch.Generator().manual_seed(0))
    ref = object_contrastive_loss(anchors.detach().float().cpu(), a_metas, ref_bank,
                                  ContrastiveConfig(update_bank_first=False), torch.Generator().manual_seed(0))
    assert res.loss.dtype == torch.float32 and res.loss.device.type == device
    assert torch.equal(res.bank_indices, ref.bank_indices)
    assert res.loss.item() == pytest.approx(ref.loss.item(), rel=0.05)
    res.loss.backward()
    assert anchors.grad.dtype == torch.bfloat16 and anchors.grad.abs().sum() > 0
    logits = torch.randn(2, 16, 16, device=device, dtype=torch.bfloat16)
    bce, dice = mask_losses([logits], [logits > 0])
    assert bce.device.type == device and dice.dtype == torch.float32
