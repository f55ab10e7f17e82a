"""Exact data parallelism: the fixed-point sum against exact rational arithmetic, independent of order and
grouping where a float32 sum is not; micro-shard steps identical side by side, with or without XLA, and
on real Horovod ranks.

Ranks of the in-process sums are threads whose ``max_fn`` / ``sum_fn`` gather every thread's tensors, so
each runs :func:`exact_sum` as a Horovod rank would. The step tests run in processes of their own: exact
mode needs one intra-op thread, fixed before TensorFlow starts.
"""

import math
import subprocess
import sys
import threading
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from gmmkit.parallel.launch import mpi_env
from gmmkit.training import exact_sum as xs
from gmmkit.training.exact import ExactStep, evaluation_chunks, local_micro_shards, shard_range

SHAPES = [(5,), (2, 3)]


# --- helpers: ranks as threads, the exact rational reference ---------------------------------------
class ThreadWorld:
    """``n`` ranks as threads; ``max_fn`` / ``sum_fn`` reduce every rank's tensors like an allreduce."""

    def __init__(self, n: int):
        self.n, self.barrier, self.slots = n, threading.Barrier(n), [None] * n

    def _reduce(self, rank, tensors, op):
        self.slots[rank] = [t.numpy() for t in tensors]
        self.barrier.wait()
        out = [op(np.stack([slot[j] for slot in self.slots]), axis=0) for j in range(len(tensors))]
        self.barrier.wait()  # every rank has read the slots before the next call refills them
        return [tf.constant(o) for o in out]

    def run(self, per_rank_terms, total, jit=False):
        """:func:`exact_sum` on each rank's terms (a list per tensor) at once; every rank's results."""
        results, errors = [None] * self.n, []

        def rank(r):
            try:
                results[r] = xs.exact_sum(
                    [np.asarray(t, np.float32).reshape(-1, *s) for t, s in zip(per_rank_terms[r], SHAPES)],
                    total,
                    lambda t: self._reduce(r, t, np.max),
                    lambda t: self._reduce(r, t, np.sum),
                    jit=jit,
                )[0]
            except Exception as exc:  # noqa: BLE001  (re-raised in the test's thread)
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=rank, args=(r,)) for r in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return [[s.numpy() for s in res] for res in results]


def split(terms, order, cuts):
    """Terms (per tensor, (M, *shape)) reordered by ``order`` and cut into contiguous rank shares."""
    bounds = [0, *cuts, len(order)]
    return [[t[order[a:b]] for t in terms] for a, b in zip(bounds, bounds[1:])]


def to_float32(value: Fraction) -> np.float32:
    """``value`` rounded once to float32, to nearest, ties to even (an exact reference, normal range)."""
    if value == 0:
        return np.float32(0.0)
    exponent = math.floor(math.log2(abs(value)))
    while abs(value) >= Fraction(2) ** (exponent + 1):
        exponent += 1
    while abs(value) < Fraction(2) ** exponent:
        exponent -= 1
    ulp = Fraction(2) ** (max(exponent, -126) - 23)
    rounded = round(value / ulp) * ulp  # Fraction's round: half to even
    return np.float32(float(rounded)) if abs(rounded) < Fraction(2) ** 128 else np.float32(math.copysign(np.inf, value))


def reference(column: np.ndarray, largest: float, total: int) -> np.float32:
    """The documented sum of one element's terms ``column``, in exact rational arithmetic: each term
    rounded (half to even) to a multiple of ``q = 2^max(E - S, -125)``, with ``largest < 2^E`` the
    tensor's largest magnitude and ``S = 63 - ceil(log2 total)``, then the exact sum rounded once."""
    if not np.isfinite(largest):
        return np.float32(np.nan)
    e = max(math.frexp(float(largest))[1], -126) if largest > 0 else -126
    q = Fraction(2) ** max(e - (63 - (total - 1).bit_length()), -125)
    return to_float32(sum(round(Fraction(float(x)) / q) for x in column) * q)


def check_exact(sum_impl, terms, groupings):
    """``sum_impl(per_rank_terms) -> per-tensor results`` must give the reference's bits for every
    grouping ``(order, cuts)`` of the M terms of ``terms``; raises AssertionError at the first miss."""
    total = len(terms[0])
    expected = []
    for t in terms:
        flat = t.reshape(total, -1).astype(np.float32)
        largest = float(np.max(np.abs(flat))) if np.all(np.isfinite(flat)) else math.inf
        expected.append(np.array([reference(col, largest, total) for col in flat.T], np.float32).reshape(t.shape[1:]))
    for order, cuts in groupings:
        got = sum_impl(split(terms, order, cuts))
        for j, (g, e) in enumerate(zip(got, expected)):
            g = np.asarray(g, np.float32)
            same = np.array_equal(g.view(np.int32), e.view(np.int32)) or bool(
                np.all(np.isnan(g)) and np.all(np.isnan(e))
            )
            assert same, (
                f"tensor {j}, cuts {list(cuts)} of order {list(order)}: expected {e.tolist()}, received {g.tolist()}"
            )


def exact_over_threads(jit=False):
    def run(shares):
        total = sum(len(share[0]) for share in shares)
        per_rank = ThreadWorld(len(shares)).run(shares, total, jit=jit)
        for other in per_rank[1:]:  # every rank holds the same bits
            assert all(np.array_equal(a.view(np.int32), b.view(np.int32)) for a, b in zip(per_rank[0], other))
        return per_rank[0]

    return run


def float32_sum(shares):
    """What the default path does: each rank sums its terms in float32, then the ranks' sums are added."""
    out = []
    for j in range(len(SHAPES)):
        partial = [np.sum(share[j], axis=0, dtype=np.float32) for share in shares]
        acc = partial[0]
        for p in partial[1:]:
            acc = np.float32(acc + p)
        out.append(acc)
    return out


def adversarial_terms(rng, m):
    """Terms across 240 binades, exact zeros, subnormals, and pairs that cancel."""
    terms = []
    for shape in SHAPES:
        t = rng.uniform(1, 2, (m, *shape)) * 2.0 ** rng.integers(-120, 120, (m, *shape))
        t *= rng.choice([-1, 1], t.shape)
        t = t.astype(np.float32).reshape(m, -1)
        t[rng.random(t.shape) < 0.1] = 0.0
        t[rng.random(t.shape) < 0.05] = np.float32(3e-42) * rng.integers(1, 1000)  # subnormals
        half = m // 2
        t[half : 2 * half] = np.where(rng.random(t[:half].shape) < 0.5, -t[:half], t[half : 2 * half])
        terms.append(t.reshape(m, *shape))
    return terms


def groupings(rng, m, count=4):
    out = [(np.arange(m), [])]
    for _ in range(count):
        ranks = int(rng.integers(2, min(m, 5) + 1)) if m > 1 else 1
        cuts = sorted(rng.choice(np.arange(0, m + 1), ranks - 1))  # a rank may hold no term
        out.append((rng.permutation(m), cuts))
    return out


# --- the exact sum ------------------------------------------------------------------------------
def test_fraction_bits_leave_headroom_for_every_term():
    for total, bits in [(1, 63), (2, 62), (3, 61), (4, 61), (5, 60), (32, 58), (33, 57), (2**24, 39)]:
        assert int(xs.fraction_bits(total)) == bits == 63 - (total - 1).bit_length()
    for bad in (0, 2**24 + 1):
        with pytest.raises(tf.errors.InvalidArgumentError, match="exact sum: expected"):
            xs.fraction_bits(bad)


def test_exact_sum_ignores_order_and_grouping_and_matches_rational_reference():
    rng = np.random.default_rng(0)
    for m in (1, 2, 7, 33):
        terms = adversarial_terms(rng, m)
        check_exact(exact_over_threads(), terms, groupings(rng, m))


def test_plain_float32_sum_fails_the_same_check():
    rng = np.random.default_rng(0)
    terms = adversarial_terms(rng, 33)
    with pytest.raises(AssertionError, match="expected"):
        check_exact(float32_sum, terms, groupings(rng, 33))
    # and on the simplest case: one large term cancelled, a small one lost or kept by the grouping
    three = [np.array([[1e8] * 5, [1.0] * 5, [-1e8] * 5], np.float32), np.zeros((3, 2, 3), np.float32)]
    assert float32_sum(split(three, np.arange(3), []))[0][0] == 0.0
    assert float32_sum(split(three, np.array([0, 2, 1]), [2]))[0][0] == 1.0
    assert exact_over_threads()(split(three, np.array([0, 2, 1]), [2]))[0][0] == 1.0


binade_floats = st.builds(
    lambda m, e, sign: np.float32(sign * m * 2.0**e),
    st.floats(1, 2, exclude_max=True),
    st.integers(-149, 120),
    st.sampled_from([-1.0, 1.0]),
)
special_floats = st.sampled_from([0.0, -0.0, 1.4e-45, -1.1754942e-38, 1.0, -1.0, 2.0**64, 2.0**-64])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_exact_sum_property(data):
    m = data.draw(st.integers(1, 12))
    values = st.lists(st.one_of(binade_floats, special_floats), min_size=m * 11, max_size=m * 11)
    flat = np.array(data.draw(values), np.float32)
    cancel = data.draw(st.booleans())
    if cancel and m > 1:  # the second half cancels the first term by term
        half = (m * 11) // 2
        flat[half : 2 * half] = -flat[:half]
    terms = [flat[: m * 5].reshape(m, 5), flat[m * 5 :].reshape(m, 2, 3)]
    order = np.array(data.draw(st.permutations(range(m))))
    cuts = sorted(data.draw(st.lists(st.integers(0, m), max_size=3)))
    check_exact(exact_over_threads(), terms, [(np.arange(m), []), (order, cuts)])


@pytest.mark.lane
def test_xla_and_tensorflow_kernels_give_the_same_bits():
    rng = np.random.default_rng(3)
    terms = adversarial_terms(rng, 9)
    shares = split(terms, rng.permutation(9), [4])
    for a, b in zip(exact_over_threads(jit=True)(shares), exact_over_threads(jit=False)(shares)):
        assert np.array_equal(a.view(np.int32), b.view(np.int32))


def test_nan_and_inf_come_out_nan_for_their_tensor_only():
    for bad in (np.nan, np.inf, -np.inf):
        terms = [np.ones((4, 5), np.float32), np.ones((4, 2, 3), np.float32)]
        terms[1][2, 1, 0] = bad
        first, second = exact_over_threads()(split(terms, np.arange(4), [1, 3]))
        assert np.array_equal(first, np.full(5, 4.0, np.float32))
        assert np.all(np.isnan(second)), f"{bad} on one rank: expected NaN everywhere, received {second}"


def test_zeros_subnormals_and_overflow():
    sub = np.float32(1e-40)
    zeros = [np.array([[0.0] * 5, [-0.0] * 5], np.float32), np.zeros((2, 2, 3), np.float32)]
    a, _ = exact_over_threads()(split(zeros, np.arange(2), [1]))
    assert np.array_equal(a.view(np.int32), np.zeros(5, np.int32))  # +0.0, the sign of zero is not kept
    tiny = [np.full((3, 5), sub, np.float32), np.full((3, 2, 3), -sub, np.float32)]
    a, b = exact_over_threads()(split(tiny, np.arange(3), [2]))
    assert not a.any() and not b.any()  # subnormals round to 0, whether or not the CPU flushes them
    mixed = [np.array([[2.0**-100] * 5, [sub] * 5], np.float32), np.zeros((2, 2, 3), np.float32)]
    a, _ = exact_over_threads()(split(mixed, np.arange(2), []))
    assert np.all(a == np.float32(2.0**-100))
    huge = [np.full((2, 5), 3e38, np.float32), np.zeros((2, 2, 3), np.float32)]
    a, _ = exact_over_threads()(split(huge, np.arange(2), [1]))
    assert np.all(np.isposinf(a))  # beyond float32's range, as a float32 sum


def test_exact_sum_refuses_what_it_cannot_sum():
    with pytest.raises(TypeError, match="terms\\[0\\]: expected float32 terms stacked on axis 0, received int32"):
        xs.exact_sum([tf.constant([1, 2])], 2)
    with pytest.raises(ValueError, match="expected non-empty tensors"):
        xs.magnitude_bounds([tf.zeros((0,))])


# --- splitting a batch into micro-shards ---------------------------------------------------------------
def test_shard_range_matches_strong_scaling_shares():
    from gmmkit.strategies import shares

    for parts, size in [(32, 3), (10, 4), (3, 5), (0, 2)]:
        ranges = [shard_range(parts, size, r) for r in range(size)]
        assert [b - a for a, b in ranges] == list(
            shares("strong", size, parts) if parts >= size else [1] * parts + [0] * (size - parts)
        )
        assert ranges[0][0] == 0 and ranges[-1][1] == parts
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    with pytest.raises(ValueError, match="expected parts >= 0 and 0 <= rank < size, received parts=4, size=2, rank=2"):
        shard_range(4, 2, 2)


def test_local_micro_shards_are_whole_and_contiguous():
    batch = np.arange(100, 132)
    got = [local_micro_shards(batch, 1, 3, r) for r in range(3)]
    assert [len(g) for g in got] == [11, 11, 10] and np.array_equal(np.concatenate(got).ravel(), batch)
    assert local_micro_shards(batch, 4, 2, 1).tolist() == batch[16:].reshape(4, 4).tolist()
    with pytest.raises(
        ValueError, match="micro_batch: expected a divisor of the global batch of 32 samples, received 5"
    ):
        local_micro_shards(batch, 5)


def test_evaluation_chunks_pad_the_last_one():
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    chunks, n = evaluation_chunks(x, 4)
    assert chunks.shape == (3, 4, 2) and n == 10
    assert np.array_equal(chunks.reshape(-1, 2)[:10], x) and not chunks.reshape(-1, 2)[10:].any()


def test_exact_step_refuses_more_than_one_intra_op_thread_and_wrong_shapes(monkeypatch):
    from gmmkit.model import build_deepdensity, per_sample_msle

    model = build_deepdensity(cube=16, components=2, filters=2, latent=4, seed=0)
    monkeypatch.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda: 2)
    with pytest.raises(RuntimeError, match="expected 1 intra-op thread .*received 2"):
        ExactStep(model, tf.keras.optimizers.SGD(), per_sample_msle, 4)
    monkeypatch.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda: 1)
    step = ExactStep(model, tf.keras.optimizers.SGD(), per_sample_msle, 4)
    with pytest.raises(
        ValueError,
        match=r"x: expected micro-shards of shape \(m_local, 4, 16, 16, 16\), "
        r"received \(8, 16, 16, 16\)",
    ):
        step.train_step(np.zeros((8, 16, 16, 16), np.float32), 8)
    with pytest.raises(ValueError, match="micro_batch: expected a positive integer, received 0"):
        ExactStep(model, tf.keras.optimizers.SGD(), per_sample_msle, 0)


# --- the step, in processes of its own ---------------------------------------------------------------
STEP_WORKER = r'''
"""One process or one Horovod rank: two exact steps and an evaluation of a small DeepDensity per variant."""
import sys
import numpy as np
import gmmkit  # noqa: F401
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(2)
from gmmkit.parallel import distributed
from gmmkit.data import generate_phantoms
from gmmkit.model import build_deepdensity, per_sample_msle
from gmmkit.training import exact_sum as xs
from gmmkit.training.exact import ExactStep, evaluation_chunks, local_micro_shards, shard_range
from gmmkit.training.optimizer import Adam

out, variants = sys.argv[1], sys.argv[2].split(",")
ctx = distributed.init(threads=2, exact=True)  # the Trainer's way: Horovod when launched, grouped int reductions
rank, size = ctx.rank, ctx.size
max_fn, sum_fn = ctx.exact_reductions()
res = {}
# the exact sum alone: 12 terms across 200 binades with cancellations, ranks holding 7 and 5
rng = np.random.default_rng(7)
terms = (rng.uniform(1, 2, (12, 6)) * 2.0 ** rng.integers(-100, 100, (12, 6)) * rng.choice([-1, 1], (12, 6)))
terms = terms.astype(np.float32)
terms[6:] = np.where(rng.random((6, 6)) < 0.5, -terms[:6], terms[6:])
a, b = (0, 12) if size == 1 else [(0, 7), (7, 12)][rank]
res["exact_sum"] = xs.exact_sum([terms[a:b]], 12, max_fn, sum_fn)[0][0].numpy()
data = generate_phantoms(24, seed=1).cubes
for variant in variants:
    parallel, jit = (2 if "p2" in variant else 1), ("nojit" not in variant)
    model = build_deepdensity(cube=16, components=4, filters=8, latent=32, seed=0)
    optimizer = Adam(1e-2)
    optimizer.build(model.trainable_variables)
    step = ExactStep(model, optimizer, per_sample_msle, 2, max_fn, sum_fn, parallel=parallel, jit=jit)
    if size == 1 and variant == variants[0]:
        full, _ = step.micro_shard_gradients(data[:10].reshape(5, 2, 16, 16, 16), 10)
        parts = [step.micro_shard_gradients(data[i:j].reshape(-1, 2, 16, 16, 16), 10)[0] for i, j in [(0, 6), (6, 10)]]
        res["terms_independent"] = all(np.array_equal(f.numpy(), np.concatenate([p[k].numpy() for p in parts]))
                                       for k, f in enumerate(full))
        exact, _ = step.gradients(data[:10].reshape(5, 2, 16, 16, 16), 10)
        with tf.GradientTape() as tape:
            scaled = tf.reduce_sum(per_sample_msle(data[:10], model(data[:10], training=True))) / 10.0
        plain = tape.gradient(scaled, model.trainable_variables)
        res["gradient_diff"] = max(float(np.max(np.abs(e.numpy() - p.numpy())) / np.max(np.abs(p.numpy())))
                                   for e, p in zip(exact, plain))
    losses = []
    for s in range(2):
        batch = np.arange(10 * s, 10 * s + 10)
        loss, stop = step.train_step(data[local_micro_shards(batch, 2, size, rank)], 10,
                                     stop=(s == 1 and rank == size - 1))
        losses += [float(loss), float(stop)]
    chunks, n = evaluation_chunks(data[:13], 4)
    a, b = shard_range(len(chunks), size, rank)
    val = step.eval_step(chunks[a:b], max(0, min(4 * b, n) - 4 * a), n)
    res[f"{variant}/losses"] = np.array(losses, np.float32)
    res[f"{variant}/val"] = val.numpy()
    state = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
    for i, v in enumerate(list(model.trainable_variables) + list(state)):
        res[f"{variant}/state{i}"] = np.asarray(v.numpy())
    if size == 1 and variant == variants[0]:
        res["val_plain"] = np.float32(np.sum(per_sample_msle(data[:13], model(data[:13], training=False)).numpy(),
                                             dtype=np.float64))
if rank == 0:
    np.savez(out, **res)
'''
VARIANTS = "p1-jit,p2-jit,p1-nojit"


def run_worker(tmp_path, name, variants=VARIANTS, ranks=None):
    script = tmp_path / "exact_worker.py"
    script.write_text(STEP_WORKER)
    out = tmp_path / f"{name}.npz"
    cmd = [sys.executable, str(script), str(out), variants]
    if ranks:
        cmd = ["mpirun", "-np", str(ranks), "--bind-to", "none", "--oversubscribe", *cmd]
    env = {**mpi_env(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return dict(np.load(out))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("exact-one"), "one")


def same_bits(a, b) -> bool:
    a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def variant_keys(result, variant):
    return sorted(k for k in result if k.startswith(variant + "/"))


@pytest.mark.lane
def test_side_by_side_and_without_xla_the_step_is_bit_identical(one_process):
    keys = variant_keys(one_process, "p1-jit")
    assert len(keys) > 30  # weights, Adam's state, losses and stop votes, the validation sum
    for other in ("p2-jit", "p1-nojit"):
        differ = [k for k in keys if not same_bits(one_process[k], one_process[k.replace("p1-jit", other)])]
        assert not differ, f"{other}: expected the bits of p1-jit, these differ: {differ}"


@pytest.mark.lane
def test_micro_shard_gradients_do_not_depend_on_the_other_micro_shards(one_process):
    assert bool(one_process["terms_independent"])


@pytest.mark.lane
def test_exact_gradient_and_losses_are_the_batch_ones_up_to_float32_rounding(one_process):
    assert float(one_process["gradient_diff"]) < 1e-5
    np.testing.assert_allclose(one_process["p1-jit/val"], one_process["val_plain"], rtol=1e-6)
    losses = one_process["p1-jit/losses"]
    assert losses[1] == 0.0 and losses[3] == 1.0  # the stop vote of the second step comes back


@pytest.mark.mpi
def test_two_horovod_ranks_follow_the_one_process_run_bit_for_bit(one_process, tmp_path):
    two = run_worker(tmp_path, "two", "p1-jit", ranks=2)  # the other variants match it on one process
    # the exact sum alone, Horovod-reduced (int32 max, int64 sum, grouped) against one process
    assert same_bits(two["exact_sum"], one_process["exact_sum"])
    local = xs.exact_sum([tf.constant(np.zeros((0, 6), np.float32))], 12)  # and an empty rank is fine
    assert not local[0][0].numpy().any()
    # two steps with uneven shares (3 and 2 micro-shards), the stop vote of rank 1, a split evaluation
    keys = variant_keys(one_process, "p1-jit")
    differ = [k for k in keys if not same_bits(two[k], one_process[k])]
    assert not differ, f"2 ranks: expected the one-process bits, these differ: {differ}"


# --- a micro-shard's terms, whatever group it is computed in ------------------------------------------
BITS_WORKER = r'''
"""The paper's model: each micro-shard's terms in two arrangements of the same 32 samples, and a plain
batched gradient of the same 16 samples in two orders."""
import sys
import numpy as np
import gmmkit  # noqa: F401
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from gmmkit.data import generate_phantoms
from gmmkit.model import build_deepdensity, per_sample_msle
from gmmkit.training.exact import ExactStep

x = generate_phantoms(32, seed=0).cubes
model = build_deepdensity(cube=16, components=50, filters=32, latent=256, seed=0)
res = {}
for b in (1, 8):  # Dense kernels as outer products per sample, and as one product per micro-shard
    step = ExactStep(model, tf.keras.optimizers.SGD(), per_sample_msle, b)
    shards, moved = x.reshape(-1, b, 16, 16, 16), np.random.default_rng(b).permutation(32 // b)
    one, _ = step.micro_shard_gradients(shards, 32, group=32 // b)  # all in one group, in order
    other, _ = step.micro_shard_gradients(shards[moved], 32, group=16 // b)  # groups of 16, shuffled
    for j, (a, c) in enumerate(zip(one, other)):
        per = a.shape[0] // len(shards)  # rows per micro-shard: 1, or one per sample
        a = a.numpy().reshape(len(shards), per, -1)
        c = c.numpy().reshape(len(shards), per, -1)
        res[f"b{b}/{j}/one"], res[f"b{b}/{j}/other"] = a[moved], c
    exact = [step.gradients(shards[i], 32)[0] for i in (np.arange(len(shards)), moved)]
    for j, (a, c) in enumerate(zip(*exact)):
        res[f"b{b}/sum{j}/one"], res[f"b{b}/sum{j}/other"] = a.numpy(), c.numpy()


@tf.function
def plain(xb):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(per_sample_msle(xb, model(xb, training=True))) / 32.0
    return tape.gradient(loss, model.trainable_variables)


shuffled = x[:16][np.random.default_rng(1).permutation(16)]
for j, (a, c) in enumerate(zip(plain(tf.constant(x[:16])), plain(tf.constant(shuffled)))):
    res[f"plain/{j}/one"], res[f"plain/{j}/other"] = a.numpy(), c.numpy()
np.savez(sys.argv[1], **res)
'''


def differing(result, prefix):
    """The tensors under ``prefix`` whose bits differ between the two arrangements."""
    keys = sorted(k[: -len("/one")] for k in result if k.startswith(prefix) and k.endswith("/one"))
    assert keys, prefix
    return [k for k in keys if not same_bits(result[k + "/one"], result[k + "/other"])]


@pytest.fixture(scope="module")
def arrangements(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exact-bits")
    script = tmp / "bits_worker.py"
    script.write_text(BITS_WORKER)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp / "bits.npz")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**mpi_env(), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(tmp / "bits.npz"))


def test_a_micro_shards_terms_keep_their_bits_in_any_group_where_a_plain_batched_gradient_does_not(arrangements):
    """Issue 25: the paper's model, each micro-shard's gradient terms (every kernel, bias and loss term)
    computed among 31 companions in one group of 32 samples, and at another place among other companions
    in groups of 16: the same bits, at one and at eight samples per micro-shard, and so the same exact
    gradient. A plain batched gradient (one tape over the batch) of the same 16 samples in another order
    changes bits. (Masked to one micro-shard's loss, a plain batched gradient keeps that micro-shard's
    bits too: oneDNN adds the others' zeros without moving a bit; but that costs a backward pass per
    micro-shard, and unmasked it yields only the batch's sum, whose bits follow the order.)"""
    for b in (1, 8):
        assert not differing(arrangements, f"b{b}/"), f"micro-shards of {b}: {differing(arrangements, f'b{b}/')}"
    assert differing(arrangements, "plain/"), "a plain batched gradient kept its bits in another order"
