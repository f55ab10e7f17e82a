"""The four scaling strategies are pure functions: check them against the paper's definitions."""

import numpy as np
import pytest

from gmmkit import strategies as S


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 16, 32])
def test_strong_keeps_global_batch_and_lr(n):
    p = S.plan("strong", n, 32, 0.00105, epoch=3)
    assert p.global_batch == 32 and sum(p.shares) == 32 and len(p.shares) == n
    assert max(p.shares) - min(p.shares) <= 1
    assert p.lr == 0.00105


def test_strong_uneven_shares_cover_the_batch_once():
    p = S.plan("strong", 3, 32, 1e-3)
    assert p.shares == (11, 11, 10)
    perm = S.epoch_permutation(0, 0, 320)
    for step in range(10):
        parts = [S.worker_indices(perm, p, step, r) for r in range(3)]
        joined = np.concatenate(parts)
        np.testing.assert_array_equal(joined, perm[step * 32 : (step + 1) * 32])


@pytest.mark.parametrize("strategy,lr_factor", [("weak", 1), ("lsr", 8)])
def test_weak_and_lsr(strategy, lr_factor):
    p = S.plan(strategy, 8, 32, 0.001, epoch=10)
    assert p.shares == (32,) * 8 and p.global_batch == 256
    assert p.lr == pytest.approx(0.001 * lr_factor)


def test_warmup_rises_linearly_over_five_epochs_then_holds():
    lrs = [S.learning_rate("warmup", 8, 0.001, e) for e in (0, 1, 2.5, 5, 6, 100)]
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[1] == pytest.approx(0.001 + 7 * 0.001 / 5)
    assert lrs[2] == pytest.approx(0.001 + 7 * 0.001 / 2)
    assert lrs[3] == lrs[4] == lrs[5] == pytest.approx(0.008)
    assert S.learning_rate("warmup", 1, 0.001, 2) == pytest.approx(0.001)


def test_sample_order_is_independent_of_worker_count():
    perm = S.epoch_permutation(7, 3, 1000)
    np.testing.assert_array_equal(perm, S.epoch_permutation(7, 3, 1000))
    assert not np.array_equal(perm, S.epoch_permutation(7, 4, 1000))
    seq = S.plan("strong", 1, 32, 1e-3)
    for n in (2, 4, 5):
        par = S.plan("strong", n, 32, 1e-3)
        for step in (0, 5):
            got = np.sort(np.concatenate([S.worker_indices(perm, par, step, r) for r in range(n)]))
            np.testing.assert_array_equal(got, np.sort(S.worker_indices(perm, seq, step, 0)))


def test_last_partial_batch_dropped():
    assert S.steps_per_epoch(1844, 32) == 57
    assert S.steps_per_epoch(1844, 32 * 32) == 1
    assert S.steps_per_epoch(100, 128) == 0


@pytest.mark.parametrize(
    "args,match",
    [
        (("nope", 2, 32, 1e-3), "strategy"),
        (("strong", 33, 32, 1e-3), "at most 32 workers"),
        (("weak", 0, 32, 1e-3), "workers"),
        (("weak", 2, 0, 1e-3), "batch_size"),
    ],
)
def test_bad_arguments_name_what_is_wrong(args, match):
    with pytest.raises(ValueError, match=match):
        S.plan(*args)
