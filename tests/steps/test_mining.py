"""mine(): the SPEC step 6 contract, checked against a plain loop written from the SPEC text."""

import math
import random

import pytest
import torch

from int_engine.mining import NameWeights, mine

NEG = float("-inf")


def reference(s_before, s_after, history, eps):
    """SPEC steps 4-6 for one image, literally: lists and loops."""
    V, C = len(s_before), len(s_before[0])
    D = [0.0] * C
    for k in range(V):
        valid = [c for c in range(C) if s_before[k][c] != NEG]
        if not valid:
            continue

        def softmax(row):
            m = max(row[c] for c in valid)
            e = {c: math.exp(row[c] - m) for c in valid}
            z = sum(e.values())
            return {c: e[c] / z for c in valid}

        pb, pa = softmax(s_before[k]), softmax(s_after[k])
        d = {c: pb[c] - pa[c] for c in valid}
        best = max(valid, key=lambda c: (d[c], -c))  # ties: lowest index
        D[best] = max(D[best], max(0.0, d[best]))
    scores = [D[c] * history[c] for c in range(C)]
    total = sum(scores)
    pick = max(range(C), key=lambda c: (scores[c], -c))
    new = [eps + s / total for s in scores] if total > 0 else list(history)
    return pick, scores, new


def random_case(rng, B, V, C, ties=False, pad=True):
    sb = torch.randn(B, V, C, dtype=torch.float64)
    sa = sb + torch.randn(B, V, C, dtype=torch.float64) * rng.choice([0.0, 0.5, 2.0])
    if ties:
        sb = sb.round()
        sa = sa.round()
    if pad:
        for b in range(B):
            n_valid = rng.randint(1, C)
            sb[b, :, n_valid:] = NEG
            sa[b, :, n_valid:] = NEG
            for v in range(V):
                if rng.random() < 0.2:
                    sb[b, v] = NEG
                    sa[b, v] = NEG
    hist = torch.rand(B, C, dtype=torch.float64) + 1e-3
    return sb, sa, hist


@pytest.mark.parametrize("seed", range(30))
def test_mine_matches_the_spec_loop(seed):
    rng = random.Random(seed)
    B, V, C = rng.randint(1, 6), rng.randint(1, 9), rng.randint(1, 8)
    sb, sa, hist = random_case(rng, B, V, C, ties=seed % 3 == 0)
    pick, scores, new = mine(sb, sa, hist, eps=1e-3)
    assert pick.dtype == torch.int64 and pick.shape == (B,)
    assert scores.shape == (B, C) and new.shape == (B, C)
    for b in range(B):
        p, s, n = reference(sb[b].tolist(), sa[b].tolist(), hist[b].tolist(), 1e-3)
        assert int(pick[b]) == p
        assert scores[b].tolist() == pytest.approx(s, abs=1e-12)
        assert new[b].tolist() == pytest.approx(n, abs=1e-12)


def test_the_name_whose_removal_drops_its_score_wins():
    # candidate 0 ("snake") is the VLM's favourite before and after; candidate 1 ("frog") collapses
    sb = torch.tensor([[[3.0, 2.5]]], dtype=torch.float64)
    sa = torch.tensor([[[3.0, -2.0]]], dtype=torch.float64)
    pick, scores, _ = mine(sb, sa, torch.ones(1, 2, dtype=torch.float64))
    assert int(pick[0]) == 1  # Fig. 1: the VLM preferred "snake", mining picks "frog"
    assert scores[0, 0] == 0 and scores[0, 1] > 0.3


def test_drop_picks_removed_object_among_three():
    sb = torch.tensor([[[1.0, 1.0, 1.0]]], dtype=torch.float64)
    sa = torch.tensor([[[1.0, -5.0, 1.0]]], dtype=torch.float64)
    pick, scores, _ = mine(sb, sa, torch.ones(1, 3, dtype=torch.float64))
    assert int(pick[0]) == 1 and scores[0, 1] > 0 and scores[0, 0] == 0 and scores[0, 2] == 0


def test_no_view_moved_keeps_history_and_picks_lowest_index():
    sb = torch.randn(2, 4, 3, dtype=torch.float64)
    hist = torch.tensor([[0.2, 0.5, 0.3], [1.0, 1.0, 1.0]], dtype=torch.float64)
    pick, scores, new = mine(sb, sb.clone(), hist)
    assert pick.tolist() == [0, 0]
    assert torch.all(scores == 0)
    assert torch.equal(new, hist)


def test_padded_views_and_candidates_count_as_nothing():
    sb = torch.full((1, 3, 4), NEG, dtype=torch.float64)
    sa = sb.clone()
    sb[0, 1, :2] = torch.tensor([0.0, 0.0])
    sa[0, 1, :2] = torch.tensor([0.0, -3.0])
    pick, scores, new = mine(sb, sa, torch.ones(1, 4, dtype=torch.float64))
    assert int(pick[0]) == 1
    assert scores[0, 2:].tolist() == [0.0, 0.0]
    assert torch.isfinite(new).all()


def test_eq6_7_accumulation_over_iterations():
    """A name that moves the VLM in every iteration beats one that moves it once, by more."""
    eps = 1e-3
    w = NameWeights(eps)
    names = ["frog", "snake"]
    # iteration 1: snake moves more (a fluke); iterations 2-3: frog moves, snake barely
    gains = [(0.2, 0.45), (0.4, 0.05), (0.4, 0.05)]
    picks = []
    for g_frog, g_snake in gains:
        # two views, each picking one name with the given softmax drop
        sb = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
        sa = torch.tensor([[[-_drop_to_logit(g_frog), 0.0], [0.0, -_drop_to_logit(g_snake)]]], dtype=torch.float64)
        w.observe(names)
        hist = w.history(names)
        pick, scores, new = mine(sb, sa, hist, eps)
        w.update(names, scores, new)
        picks.append(names[int(pick[0])])
    assert picks == ["snake", "frog", "frog"]
    # W after iteration 1: eps + D/sum
    w1 = NameWeights(eps)
    sb = torch.zeros(1, 2, 2, dtype=torch.float64)
    sa = torch.tensor([[[-_drop_to_logit(0.2), 0.0], [0.0, -_drop_to_logit(0.45)]]], dtype=torch.float64)
    w1.observe(names)
    _, scores, new = mine(sb, sa, w1.history(names), eps)
    w1.update(names, scores, new)
    total = 0.2 + 0.45
    assert w1.weights["frog"] == pytest.approx(eps + 0.2 / total, abs=1e-9)
    assert w1.weights["snake"] == pytest.approx(eps + 0.45 / total, abs=1e-9)


def _drop_to_logit(drop):
    """The logit decrease that lowers a 2-way softmax's probability from 0.5 by ``drop``."""
    p = 0.5 - drop
    return math.log(0.5 / 0.5) - math.log(p / (1 - p))


def test_names_first_seen_later_start_at_eps_and_absent_names_decay():
    eps = 1e-3
    w = NameWeights(eps)
    w.observe(["frog", "snake"])
    w.update(["frog", "snake"], torch.tensor([[0.3, 0.1]]), torch.tensor([[eps + 0.75, eps + 0.25]]))
    w.observe(["frog", "moth"])
    hist = w.history(["frog", "moth"])
    assert hist.tolist() == [[pytest.approx(eps + 0.75), eps]]
    w.update(["frog", "moth"], torch.tensor([[0.2, 0.0]]), torch.tensor([[eps + 1.0, eps]]))
    assert w.weights["snake"] == eps  # not proposed, something moved: damped, not removed
    assert w.weights["frog"] == pytest.approx(eps + 1.0)


def test_every_iteration_counts_even_without_mining():
    """SPEC step 6: iterations that skipped steps 4-6 (one candidate, none) still count, so a name
    first seen after them starts at ε while a name seen in iteration 1 keeps W = 1."""
    eps = 1e-3
    w = NameWeights(eps)
    w.observe(["frog"])  # iteration 1: one candidate, no mining
    w.observe(["frog", "snake"])  # iteration 2
    assert w.history(["frog", "snake"]).tolist() == [[1.0, eps]]
    late = NameWeights(eps)
    late.observe([])  # iteration 1: no candidate at all
    late.observe(["frog"])
    assert late.history(["frog"]).tolist() == [[eps]]
    # no view moved: W unchanged
    w.update(["frog", "snake"], torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]))
    assert w.history(["frog", "snake"]).tolist() == [[1.0, eps]]


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\[B, V, C\]"):
        mine(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="history"):
        mine(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 2))
