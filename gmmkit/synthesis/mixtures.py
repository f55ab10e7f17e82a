"""New nodules from learnt mixtures: encode real cubes, move their parameters, render at any resolution.

The trained encoder describes a nodule as K Gaussians: weights ``alpha`` (K,), means ``mu`` (K, 3) in the
cube's [-1, 1]^3 coordinates (array axes z, y, x), Cholesky factors ``tril`` (K, 3, 3) of their
covariances, and the cube's ``mass`` (its integral over [-1, 1]^3, in normalised intensity). The rendered
nodule is ``mass * sum_k alpha_k N(x; mu_k, L_k L_k^T)``: a density per unit volume of those coordinates, so
the same parameters give the same intensities on a grid of any size (a model trained on 16^3 cubes renders
32^3 or 64^3 nodules of the same physical extent, only finer).

Two ways to make new parameters (both keep every covariance positive definite):

``perturb`` (:func:`perturb`)
    Start from one encoded real nodule and jitter it. Each mean moves by ``mean_jitter`` times its own
    component's spread, ``mu + mean_jitter * L z`` with ``z ~ N(0, I)``; each covariance is rescaled per
    axis by log-normal factors, ``L <- diag(f) L`` with ``log f ~ N(0, sigma_jitter^2)`` (positive factors on
    the rows of a Cholesky factor keep its diagonal positive and keep the correlations); the weights are
    drawn from a Dirichlet around the originals, ``Dirichlet(concentration * alpha)``; the mass is scaled by
    ``exp(N(0, mass_jitter^2))``. Small jitters give close variations of one real nodule.

``sample`` (:func:`sample`)
    Fit a Gaussian to the encoded set in an unconstrained parameter space (:func:`to_vector`: centred log
    alpha, atanh mu, log of the Cholesky diagonal, the Cholesky off-diagonal, log mass), per group, and draw
    from it. Any vector maps back to valid parameters (softmax weights, tanh means, exp diagonal), so every
    sample is a valid mixture. Groups are categories when known (the phantoms' four), else k-means clusters
    of the encoded set (``groups=G``), else one group. With fewer nodules than dimensions the fitted
    covariance is the sample covariance, drawn exactly through the data: ``mean + (X - mean)^T z /
    sqrt(n - 1)``. Caveat: component k of one nodule and component k of another are the same network head,
    not necessarily the same structure, so samples far from the data can look implausible; ``temperature``
    below 1 keeps them closer to the mean.

:func:`gmmkit.synthesis.export.synthesize` runs the whole export for ``gmmkit synthesize``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.cluster.vq import kmeans2

from .. import checks

METHODS = ("perturb", "sample")
_MU_LIMIT = 0.999  # atanh is finite inside (-1, 1)
_TINY = 1e-12


# --- parameters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixtures:
    """N Gaussian mixtures of K components: alpha (N, K), mu (N, K, 3), tril (N, K, 3, 3), mass (N,)."""

    alpha: np.ndarray
    mu: np.ndarray
    tril: np.ndarray
    mass: np.ndarray

    def __post_init__(self):
        n, k = np.shape(self.alpha)
        shapes = {"mu": (n, k, 3), "tril": (n, k, 3, 3), "mass": (n,)}
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(
                    f"{name}: expected shape {shape} to match alpha {(n, k)}, received {np.shape(getattr(self, name))}"
                )

    def __len__(self) -> int:
        return len(self.alpha)

    @property
    def components(self) -> int:
        return self.alpha.shape[1]

    def take(self, index) -> "Mixtures":
        """The mixtures at ``index`` (an integer array or a slice)."""
        index = index if isinstance(index, slice) else np.asarray(index)
        return Mixtures(self.alpha[index], self.mu[index], self.tril[index], self.mass[index])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"alpha": self.alpha, "mu": self.mu, "tril": self.tril, "mass": self.mass}


def encode(model, cubes: np.ndarray, batch_size: int = 64) -> Mixtures:
    """Mixture parameters of ``cubes`` (N, S, S, S) under a trained DeepDensity ``model``."""
    from ..model import mixture_model  # heavy: TensorFlow

    encoder = mixture_model(model)
    parts = [
        encoder(np.asarray(cubes[i : i + batch_size], dtype=np.float32), training=False)
        for i in range(0, len(cubes), batch_size)
    ]
    alpha, mu, tril, mass = (np.concatenate([np.asarray(p[j]) for p in parts]).astype(np.float64) for j in range(4))
    return Mixtures(alpha, mu, tril, mass)


def render(mixtures: Mixtures, size: int, max_elements: int = 2**25) -> np.ndarray:
    """``mass * mixture density`` on the voxel centres of a ``size``-cube: (N, size, size, size) float32.

    Normalised intensities, the units of the cubes the model was trained on, at any ``size``. At most
    ``max_elements`` component-voxel values exist at once (several cubes together, or one cube in slabs),
    so the memory beyond the result is bounded whatever the size; :func:`render_each` bounds the result too.
    """
    out = np.empty((len(mixtures), size, size, size), dtype=np.float32)
    for index, volume in render_each(mixtures, size, max_elements):
        out[index] = volume
    return out


def render_each(mixtures: Mixtures, size: int, max_elements: int = 2**25):
    """Yield ``(i, volume)`` for each mixture, one (size, size, size) float32 cube at a time (see :func:`render`)."""
    from ..model import render_grid  # heavy: TensorFlow

    if not (isinstance(size, (int, np.integer)) and size > 0):
        raise ValueError(f"size: expected a positive integer, received {size!r}")
    per_cube = mixtures.components * size**3
    batch = max(1, max_elements // per_cube)
    rows = max(1, min(size, max_elements // (mixtures.components * size * size)))  # slabs of one cube
    for i in range(0, len(mixtures), batch):
        part = mixtures.take(slice(i, i + batch))
        block = np.empty((len(part), size, size, size), dtype=np.float32)
        for first in range(0, size, rows):
            last = min(size, first + rows)
            block[:, first:last] = render_grid(
                part.alpha.astype(np.float32),
                part.mu.astype(np.float32),
                part.tril.astype(np.float32),
                size,
                rows=(first, last),
            )
        block *= part.mass[:, None, None, None].astype(np.float32)
        for j, volume in enumerate(block):
            yield i + j, volume


_OFF_DIAGONAL = ((1, 0), (2, 0), (2, 1))


def to_vector(mixtures: Mixtures) -> np.ndarray:
    """Each mixture as one unconstrained vector of ``10 K + 1`` numbers, see :func:`from_vector`.

    Per component: centred log alpha (1), atanh mu (3), log diag L (3), off-diagonal L (3); then log mass.
    """
    log_alpha = np.log(np.maximum(mixtures.alpha, _TINY))
    log_alpha -= log_alpha.mean(axis=1, keepdims=True)
    mu = np.arctanh(np.clip(mixtures.mu, -_MU_LIMIT, _MU_LIMIT))
    diag = np.log(np.maximum(np.diagonal(mixtures.tril, axis1=-2, axis2=-1), _TINY))
    off = np.stack([mixtures.tril[..., r, c] for r, c in _OFF_DIAGONAL], axis=-1)
    per_component = np.concatenate([log_alpha[..., None], mu, diag, off], axis=-1)  # (N, K, 10)
    log_mass = np.log(np.maximum(mixtures.mass, _TINY))[:, None]
    return np.concatenate([per_component.reshape(len(mixtures), -1), log_mass], axis=1)


def from_vector(vectors: np.ndarray, components: int) -> Mixtures:
    """Valid mixtures from any vectors of :func:`to_vector`'s layout (softmax, tanh, exp make them so)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[1] != 10 * components + 1:
        raise ValueError(
            f"vectors: expected shape (N, {10 * components + 1}) for {components} components, received {vectors.shape}"
        )
    n = len(vectors)
    per = vectors[:, :-1].reshape(n, components, 10)
    logits = per[..., 0] - per[..., 0].max(axis=1, keepdims=True)
    alpha = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    tril = np.zeros((n, components, 3, 3))
    for d in range(3):
        tril[..., d, d] = np.exp(per[..., 4 + d])
    for i, (r, c) in enumerate(_OFF_DIAGONAL):
        tril[..., r, c] = per[..., 7 + i]
    return Mixtures(alpha, np.tanh(per[..., 1:4]), tril, np.exp(vectors[:, -1]))


# --- generation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    """New mixtures, the encoded real nodule each came from (index), and its group (-1: none)."""

    mixtures: Mixtures
    source: np.ndarray  # (n,) int
    group: np.ndarray  # (n,) int


def perturb(
    encoded: Mixtures,
    n: int,
    rng: np.random.Generator,
    mean_jitter: float = 0.1,
    sigma_jitter: float = 0.1,
    concentration: float = 100.0,
    mass_jitter: float = 0.05,
) -> Generated:
    """``n`` jittered copies of encoded real nodules, the sources taken in turn in a shuffled order.

    See the module docstring for what each knob does; all zero (and ``concentration`` infinite) returns
    the sources unchanged.
    """
    _check_count(n, encoded)
    for name, value in (("mean_jitter", mean_jitter), ("sigma_jitter", sigma_jitter), ("mass_jitter", mass_jitter)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: expected a number >= 0, received {value!r}")
    if not concentration > 0:
        raise ValueError(f"concentration: expected a positive number, received {concentration!r}")
    source = _cycle(len(encoded), n, rng)
    base = encoded.take(source)
    k = encoded.components
    z = rng.standard_normal((n, k, 3))
    mu = np.clip(base.mu + mean_jitter * np.einsum("nkij,nkj->nki", base.tril, z), -_MU_LIMIT, _MU_LIMIT)
    factors = np.exp(sigma_jitter * rng.standard_normal((n, k, 3)))
    tril = factors[..., :, None] * base.tril  # diag(f) L: still lower triangular, diagonal still positive
    if math.isinf(concentration):
        alpha = base.alpha.copy()
    else:
        alpha = np.stack([rng.dirichlet(np.maximum(concentration * a, 1e-3)) for a in base.alpha])
        alpha = np.maximum(alpha, _TINY)
        alpha /= alpha.sum(axis=1, keepdims=True)
    mass = base.mass * np.exp(mass_jitter * rng.standard_normal(n))
    return Generated(Mixtures(alpha, mu, tril, mass), source, np.full(n, -1))


def cluster(encoded: Mixtures, groups: int, rng: np.random.Generator) -> np.ndarray:
    """k-means labels (N,) of the encoded set in the standardised :func:`to_vector` space."""
    if not (isinstance(groups, (int, np.integer)) and 1 <= groups <= len(encoded)):
        checks.fail("synthesis.groups", f"an integer from 1 to the {len(encoded)} encoded nodules", groups)
    if groups == 1:
        return np.zeros(len(encoded), dtype=np.int64)
    x = _standardise(to_vector(encoded))
    _, labels = kmeans2(x, groups, minit="++", seed=rng)
    return labels.astype(np.int64)


def sample(
    encoded: Mixtures, n: int, rng: np.random.Generator, groups: int | Sequence[int] = 1, temperature: float = 1.0
) -> Generated:
    """``n`` mixtures drawn from per-group Gaussians fitted in :func:`to_vector` space.

    ``groups``: an int G (k-means into G clusters; 1: one Gaussian over everything) or one label per
    encoded nodule (known categories). Each draw picks a group with probability proportional to its size;
    ``source`` is the group member nearest to the draw. ``temperature`` scales the spread (0: group means).
    """
    _check_count(n, encoded)
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature: expected a number >= 0, received {temperature!r}")
    labels = cluster(encoded, groups, rng) if np.ndim(groups) == 0 else np.asarray(groups, dtype=np.int64)
    if labels.shape != (len(encoded),):
        raise ValueError(f"groups: expected one label per encoded nodule ({len(encoded)}), received {labels.shape[0]}")
    x = to_vector(encoded)
    scale = x.std(axis=0) + 1e-6
    names, counts = np.unique(labels, return_counts=True)
    picked = rng.choice(len(names), size=n, p=counts / counts.sum())
    out = np.empty((n, x.shape[1]))
    source = np.empty(n, dtype=np.int64)
    for g, name in enumerate(names):
        rows = np.flatnonzero(picked == g)
        if len(rows) == 0:
            continue
        members = np.flatnonzero(labels == name)
        xg = x[members]
        mean = xg.mean(axis=0)
        if len(members) > 1:
            z = rng.standard_normal((len(rows), len(members)))
            draws = mean + temperature * (z @ (xg - mean)) / math.sqrt(len(members) - 1)
        else:
            draws = np.repeat(mean[None], len(rows), axis=0)
        out[rows] = draws
        distance = (((draws[:, None, :] - xg[None]) / scale) ** 2).sum(axis=-1)
        source[rows] = members[distance.argmin(axis=1)]
    return Generated(from_vector(out, encoded.components), source, names[picked])


def generate(method: str, encoded: Mixtures, n: int, seed: int = 0, **options) -> Generated:
    """:func:`perturb` or :func:`sample` by name, with a generator seeded by ``seed``."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, received {method!r}")
    rng = np.random.default_rng(seed)
    return (perturb if method == "perturb" else sample)(encoded, n, rng, **options)


def central_slices(volumes: np.ndarray) -> np.ndarray:
    """The axial slice through the centre, z = 0, of each (N, S, S, S) volume: the mean of the two middle
    slices when S is even (so cubes of different sizes show the same plane)."""
    s = volumes.shape[1]
    return volumes[:, s // 2] if s % 2 else 0.5 * (volumes[:, s // 2 - 1] + volumes[:, s // 2])


def _cycle(n_sources: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Source indices taking every source once per round, each round in a new shuffled order."""
    rounds = -(-n // n_sources)
    return np.concatenate([rng.permutation(n_sources) for _ in range(rounds)])[:n]


def _check_count(n: int, encoded: Mixtures) -> None:
    if not (isinstance(n, (int, np.integer)) and n > 0):
        raise ValueError(f"n: expected a positive integer, received {n!r}")
    if len(encoded) == 0:
        raise ValueError("encoded: expected at least one encoded nodule, received none")


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
