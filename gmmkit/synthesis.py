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

:func:`synthesize` runs the whole export for ``gmmkit synthesize``: load a run, encode, generate, render,
write images (normalised intensities, and HU with ``hu=True``), a ``manifest.json``/``manifest.csv``, the
parameters (``mixtures.npz``) and a gallery.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DatasetError, InputError, RunDirError

METHODS = ("perturb", "sample")
FORMATS = ("nii.gz", "mhd")
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
                raise ValueError(f"{name}: expected shape {shape} to match alpha {(n, k)}, "
                                 f"received {np.shape(getattr(self, name))}")

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
    from .model import mixture_model

    encoder = mixture_model(model)
    parts = [encoder(np.asarray(cubes[i:i + batch_size], dtype=np.float32), training=False)
             for i in range(0, len(cubes), batch_size)]
    alpha, mu, tril, mass = (np.concatenate([np.asarray(p[j]) for p in parts]).astype(np.float64)
                             for j in range(4))
    return Mixtures(alpha, mu, tril, mass)


def render(mixtures: Mixtures, size: int, max_elements: int = 2 ** 25) -> np.ndarray:
    """``mass * mixture density`` on the voxel centres of a ``size``-cube: (N, size, size, size) float32.

    Normalised intensities, the units of the cubes the model was trained on, at any ``size``. Batches are
    sized so that at most ``max_elements`` component-voxel values exist at once.
    """
    from .model import render_grid

    if not (isinstance(size, (int, np.integer)) and size > 0):
        raise ValueError(f"size: expected a positive integer, received {size!r}")
    batch = max(1, max_elements // (mixtures.components * size ** 3))
    out = np.empty((len(mixtures), size, size, size), dtype=np.float32)
    for i in range(0, len(mixtures), batch):
        part = mixtures.take(slice(i, i + batch))
        density = render_grid(part.alpha.astype(np.float32), part.mu.astype(np.float32),
                              part.tril.astype(np.float32), size)
        out[i:i + batch] = np.asarray(density) * part.mass[:, None, None, None].astype(np.float32)
    return out


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
        raise ValueError(f"vectors: expected shape (N, {10 * components + 1}) for {components} components, "
                         f"received {vectors.shape}")
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


def perturb(encoded: Mixtures, n: int, rng: np.random.Generator, mean_jitter: float = 0.1,
            sigma_jitter: float = 0.1, concentration: float = 100.0, mass_jitter: float = 0.05) -> Generated:
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
    from scipy.cluster.vq import kmeans2

    if not (isinstance(groups, (int, np.integer)) and 1 <= groups <= len(encoded)):
        raise ValueError(f"groups: expected an integer from 1 to the {len(encoded)} encoded nodules, "
                         f"received {groups!r}")
    if groups == 1:
        return np.zeros(len(encoded), dtype=np.int64)
    x = _standardise(to_vector(encoded))
    _, labels = kmeans2(x, groups, minit="++", seed=rng)
    return labels.astype(np.int64)


def sample(encoded: Mixtures, n: int, rng: np.random.Generator, groups: int | Sequence[int] = 1,
           temperature: float = 1.0) -> Generated:
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
        raise ValueError(f"groups: expected one label per encoded nodule ({len(encoded)}), "
                         f"received {labels.shape[0]}")
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


# --- a trained run -------------------------------------------------------------------------------

def load_run(run_dir: str | os.PathLike):
    """The :class:`~gmmkit.config.RunConfig` and trained model of a run directory (its last checkpoint)."""
    from .config import RunConfig
    from .model import from_config
    from .training import RunDir

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise RunDirError(f"RUN_DIR {run_dir}: not a gmmkit run directory (no config.json)")
    cfg = RunConfig.load(run_dir / "config.json")
    ckpt = RunDir(run_dir).load_checkpoint()
    if ckpt is None:
        raise RunDirError(f"RUN_DIR {run_dir}: no checkpoint.npz (the run has not finished an epoch)")
    model = from_config(cfg)
    try:
        model.set_weights(ckpt["weights"])
    except ValueError as exc:
        raise RunDirError(f"{run_dir / 'checkpoint.npz'}: its weights do not fit the model config.json "
                          f"describes ({exc})") from None
    return cfg, model


# --- the export ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Synthesis:
    """What :func:`synthesize` wrote and computed."""

    out: Path
    files: list[Path]  # one image per generated nodule (normalised intensities)
    hu_files: list[Path]  # the same in HU, when asked for
    generated: Generated
    encoded: Mixtures
    real: np.ndarray  # (N, S, S, S) the encoded real cubes
    volumes: np.ndarray  # (n, size, size, size) rendered, normalised intensities
    spacing_mm: float  # voxel size of the written images
    manifest: Path
    gallery: Path | None


def synthesize(run_dir: str | os.PathLike, out: str | os.PathLike, n: int = 100, size: int | None = None,
               method: str = "perturb", format: str = "nii.gz", seed: int = 0,
               source: str | os.PathLike | None = None, spacing_mm: float | None = None, hu: bool = False,
               gallery_rows: int = 6, options: dict | None = None, progress: bool = True) -> Synthesis:
    """Generate ``n`` nodules from a trained run and write them to ``out``.

    Real cubes to start from: ``source`` (a cubes.npz) or the run's validation split. ``size``: voxels per
    side of the output (default: the training cube). ``spacing_mm``: the training voxel size (default: the
    ``spacing_mm`` stored in the cubes' .npz, else 1.0); images are written at ``spacing_mm * cube / size``
    so that they span the same millimetres as the training cubes, centred on the world origin.
    ``options`` go to :func:`perturb` or :func:`sample`.

    Files in ``out``: ``nodule_0000.<format>`` ... in normalised intensities (float32, the units of
    :func:`gmmkit.data.normalize_hu`; 0 is -1000 HU, 1 is +400 HU), with ``hu=True`` also
    ``nodule_0000_hu.<format>`` (int16 HU, intensities clipped to the window first); ``mixtures.npz`` (the
    generated parameters, their source and group); ``gallery.html`` (central slices of generated nodules
    beside their source, self-contained); ``manifest.csv`` and, written last, ``manifest.json``.
    """
    from .ct import write_image
    from .data import load_split
    from .data.intensity import denormalize
    from .data.luna import CubeSet, stored_spacing
    from .io import atomic_savez, atomic_write_json, atomic_write_text

    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, received {format!r}")
    cfg, model = load_run(run_dir)
    cube = cfg.data.cube
    size = cube if size is None else size
    if not (isinstance(size, (int, np.integer)) and size > 0):
        raise ValueError(f"size: expected a positive integer, received {size!r}")
    seriesuid = None
    if source is not None:
        cubes = CubeSet.load(source)
        if cubes.cubes.shape[1] != cube:
            raise DatasetError(f"{source}: cubes are {cubes.cubes.shape[1]} voxels wide, the run was trained on "
                               f"{cube}")
        real, seriesuid = cubes.cubes, cubes.seriesuid
        stored = cubes.spacing_mm
        real_from = str(source)
    else:
        try:
            real = load_split(cfg.data).val
        except InputError as exc:
            raise DatasetError(f"{exc} (needed for the run's validation split; pass a cubes.npz as source)") from None
        is_file = cfg.data.dataset != "phantoms"
        stored = stored_spacing(cfg.data.dataset) if is_file else 1.0
        real_from = f"validation split of {cfg.data.dataset}"
    spacing_mm = stored if spacing_mm is None else float(spacing_mm)
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm: expected a positive number, received {spacing_mm!r}")
    out_spacing = spacing_mm * cube / size

    encoded = encode(model, real)
    generated = generate(method, encoded, n, seed, **(options or {}))
    volumes = render(generated.mixtures, size)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "." + format
    origin_xyz = (-(size - 1) / 2.0 * out_spacing,) * 3  # the cube's centre at the world origin
    files, hu_files = [], []
    from tqdm.auto import tqdm

    for i in tqdm(range(n), desc="writing", unit="nodule", disable=not progress):
        files.append(write_image(out / f"nodule_{i:04d}{suffix}", volumes[i], (out_spacing,) * 3, origin_xyz))
        if hu:
            hu_volume = np.round(denormalize(np.clip(volumes[i], 0.0, 1.0))).astype(np.int16)
            hu_files.append(write_image(out / f"nodule_{i:04d}_hu{suffix}", hu_volume, (out_spacing,) * 3,
                                        origin_xyz))
    g = generated
    atomic_savez(out / "mixtures.npz", **g.mixtures.arrays(), source=g.source, group=g.group,
                 size=np.int64(size), spacing_mm=np.float64(out_spacing))
    gallery = _write_gallery(out / "gallery.html", real, volumes, g, gallery_rows, seriesuid) if gallery_rows else None

    records = []
    for i in range(n):
        s = int(g.source[i])
        records.append({"index": i, "file": files[i].name, "file_hu": hu_files[i].name if hu else "",
                        "source": s, "source_seriesuid": str(seriesuid[s]) if seriesuid is not None else "",
                        "group": int(g.group[i]), "mass": float(g.mixtures.mass[i])})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(out / "manifest.csv", buffer.getvalue())
    manifest = out / "manifest.json"
    atomic_write_json(manifest, {
        "run": str(run_dir), "real_cubes": real_from, "n_real": int(len(real)), "method": method,
        "options": options or {}, "seed": seed, "n": n, "size": size, "format": format,
        "training_cube": cube, "training_spacing_mm": spacing_mm, "spacing_mm": out_spacing,
        "origin_mm": list(origin_xyz), "components": encoded.components,
        "values": "normalised intensities (gmmkit.data.normalize_hu units: 0 = -1000 HU, 1 = +400 HU), float32",
        "values_hu": "int16 Hounsfield units (window -1000..400)" if hu else None,
        "mixtures": "mixtures.npz", "gallery": gallery.name if gallery else None, "files": records,
    })
    return Synthesis(out, files, hu_files, generated, encoded, real, volumes, out_spacing, manifest, gallery)


def gallery_figure(real: np.ndarray, volumes: np.ndarray, generated: Generated, rows: int = 6,
                   per_row: int = 4, seriesuid: np.ndarray | None = None):
    """Plotly figure: for up to ``rows`` real nodules, their central slice beside those of their offspring."""
    from .plots.gallery import nodule_gallery

    sources = list(dict.fromkeys(int(s) for s in generated.source))[:rows]
    real_slices = central_slices(real)
    new_slices = central_slices(volumes)
    grid, labels = [], []
    for s in sources:
        children = np.flatnonzero(generated.source == s)[:per_row]
        grid.append([real_slices[s]] + [new_slices[c] for c in children])
        label = f"real {s}"
        if seriesuid is not None and str(seriesuid[s]):
            label += f"<br>…{str(seriesuid[s])[-8:]}"
        labels.append(label)
    titles = ["real"] + [f"generated {j + 1}" for j in range(max(len(r) for r in grid) - 1)]
    return nodule_gallery(grid, column_titles=titles, row_titles=labels,
                          title="Central axial slices (z = 0): real nodules and nodules generated from them")


def _write_gallery(path: Path, real, volumes, generated, rows, seriesuid) -> Path:
    from .io import atomic_write_text

    fig = gallery_figure(real, volumes, generated, rows=rows, seriesuid=seriesuid)
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path
