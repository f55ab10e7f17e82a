"""``gmmkit synthesize``: new nodules from a trained run's mixtures, rendered and written as images.

Encodes real cubes (the run's validation split, or a ``cubes.npz``) to Gaussian-mixture parameters, makes
new parameter sets (:mod:`gmmkit.synthesis.mixtures`), renders them at any size (the density is
continuous: any size, same extent in mm), and writes the images, the parameters, a manifest and a gallery.
What to make is a :class:`SynthesisConfig`, validated field by field like every gmmkit configuration.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from .. import checks, machine
from ..data.cubes import CubeSet
from ..data.images import write_image
from ..data.intensity import denormalize
from ..data.sources import load_cubes, load_split
from ..errors import DatasetError, InputError
from ..files import atomic_savez, atomic_write_json, atomic_write_text, existing_path, replace_folder, writable_path
from ..training.rundir import RunDir
from .mixtures import METHODS, Generated, Mixtures, central_slices, encode, generate, render_each

FORMATS = ("nii.gz", "mhd")


@dataclass
class SynthesisConfig:
    """What to generate. ``size``: voxels per side of the output (None: the training cube). ``source``: a
    cubes.npz to encode instead of the run's validation split. ``spacing_mm``: the training voxel size
    (None: stored in the cubes' .npz, else 1.0). ``hu``: also write each nodule in Hounsfield units.
    ``gallery_rows``: real nodules in gallery.html (0: no gallery). ``mean_jitter``, ``sigma_jitter`` and
    ``concentration`` shape ``perturb``; ``groups`` and ``temperature`` shape ``sample``."""

    n: int = 100
    size: Optional[int] = None
    method: str = "perturb"
    format: str = "nii.gz"
    seed: int = 0
    source: Optional[str] = None
    spacing_mm: Optional[float] = None
    hu: bool = False
    gallery_rows: int = 6
    mean_jitter: float = 0.1
    sigma_jitter: float = 0.1
    concentration: float = 100.0
    groups: int = 1
    temperature: float = 1.0

    def validate(self) -> "SynthesisConfig":
        checks.positive_int("synthesis.n", self.n)
        if self.size is not None:
            checks.positive_int("synthesis.size", self.size)
        checks.one_of("synthesis.method", self.method, METHODS)
        checks.one_of("synthesis.format", self.format, FORMATS)
        checks.non_negative_int("synthesis.seed", self.seed)
        if self.spacing_mm is not None:
            checks.positive_float("synthesis.spacing_mm", self.spacing_mm)
        checks.non_negative_int("synthesis.gallery_rows", self.gallery_rows)
        checks.non_negative_float("synthesis.mean_jitter", self.mean_jitter)
        checks.non_negative_float("synthesis.sigma_jitter", self.sigma_jitter)
        checks.positive_float("synthesis.concentration", self.concentration)
        checks.positive_int("synthesis.groups", self.groups)
        checks.non_negative_float("synthesis.temperature", self.temperature)
        return self

    def options(self) -> dict:
        """The keyword arguments of the chosen method."""
        if self.method == "perturb":
            return {
                "mean_jitter": self.mean_jitter,
                "sigma_jitter": self.sigma_jitter,
                "concentration": self.concentration,
            }
        return {"groups": self.groups, "temperature": self.temperature}


@dataclass(frozen=True)
class Synthesis:
    """What :func:`synthesize` wrote and computed."""

    out: Path
    files: list[Path]  # one image per generated nodule (normalised intensities)
    hu_files: list[Path]  # the same in HU, when asked for
    generated: Generated
    encoded: Mixtures
    real: np.ndarray  # (N, S, S, S) the encoded real cubes
    size: int  # voxels per side of the written nodules
    central: np.ndarray  # (n, size, size): each written nodule's central axial slice
    spacing_mm: float  # voxel size of the written images
    manifest: Path
    gallery: Path | None


def _real_cubes(cfg, source: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray], float, str]:
    """The real cubes to encode, their seriesuids (None when unknown), their voxel size, and where from."""
    if source is not None:
        cubes = CubeSet.load(source, cfg.data.cube)
        return cubes.cubes, cubes.seriesuid, cubes.spacing_mm, str(source)
    try:
        real = load_split(cfg.data).val
    except InputError as exc:
        raise DatasetError(f"{exc} (needed for the run's validation split; pass a cubes.npz as source)") from None
    return real, None, load_cubes(cfg.data).spacing_mm, f"validation split of {cfg.data.dataset}"


# What a synthesis holds at its peak, measured (benchmarks/RESULTS.md, "synthesize's memory"): the process with
# TensorFlow and the model; per voxel of one nodule, the rendered cube, its HU copy and the image writer's
# copies; the renderer's workspace, per float of its quadratic features (10 per point of a slab) and of its
# component-point exponentials; and each nodule's central slice, kept for the gallery.
# Bytes, a least-squares fit to the peaks of 7 syntheses (K = 4 and 50, sizes 64 to 512) plus about a tenth.
PEAK_BASE = 0.6 * 2**30
PEAK_PER_VOXEL = 16.0
PEAK_PER_FEATURE = 16.0
PEAK_PER_EXPONENTIAL = 18.5


def peak_memory(size: int, components: int, n: int = 1, max_elements: int = 2**25) -> float:
    """Bytes a synthesis of ``n`` nodules of ``size``^3 from a ``components``-Gaussian model needs at its peak
    (the rendering of :func:`gmmkit.synthesis.mixtures.render_each`, in slabs of ``max_elements``)."""
    per_cube = components * size**3
    cubes = min(n, max(1, max_elements // per_cube))  # rendered together
    rows = max(1, min(size, max_elements // (components * size * size)))  # slab of one cube
    points = rows * size * size
    workspace = PEAK_PER_FEATURE * 10 * points + PEAK_PER_EXPONENTIAL * cubes * components * points
    return PEAK_BASE + workspace + PEAK_PER_VOXEL * cubes * size**3 + 4 * n * size**2


def check_memory(size: int, components: int, n: int = 1) -> None:
    """Refuse a ``size`` whose synthesis would not fit in the memory available now, before any work: the
    measured peak of :func:`peak_memory`, less what of its base (TensorFlow, the model) this process holds
    already."""
    need = peak_memory(size, components, n) - min(machine.resident_memory(), PEAK_BASE)
    available = machine.available_memory()
    if available is not None and need > available:
        checks.fail(
            "synthesis.size",
            f"a size whose synthesis fits in the {available / 2**30:.1f} GiB of memory available (nodules of "
            f"{size}^3 need {need / 2**30:.1f} GiB)",
            size,
        )


def synthesize(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    what: Optional[SynthesisConfig] = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Synthesis:
    """Generate ``what.n`` nodules from a trained run and write them to the folder ``out``.

    ``out`` must be new or empty, or hold an earlier synthesis (``manifest.json``) that ``overwrite``
    replaces; the new folder is written beside it and takes its place only once complete, so a failure (a
    full disk: checked after the first nodule, and caught on every write) leaves ``out`` as it was. Images
    are written at ``spacing_mm * cube / size`` so that they span the same millimetres as the training
    cubes, centred on the world origin. Files in ``out``: ``nodule_0000.<format>`` ... in normalised
    intensities (float32, the units of :func:`gmmkit.data.intensity.normalize_hu`; 0 is -1000 HU, 1 is
    +400 HU), with ``hu`` also ``nodule_0000_hu.<format>`` (int16 HU, intensities clipped to the window
    first); ``mixtures.npz`` (the generated parameters, their source and group); ``gallery.html`` (central
    slices of generated nodules beside their source, self-contained); ``manifest.csv`` and ``manifest.json``.
    """
    what = (what or SynthesisConfig()).validate()
    if what.source is not None:
        existing_path("synthesis.source", what.source)
    writable_path("out", out)
    run = RunDir.open(run_dir, "--run")
    cfg = run.config()
    cube = cfg.data.cube
    size = cube if what.size is None else what.size
    check_memory(size, cfg.model.components, what.n)
    model, _epoch = run.load_model()
    real, seriesuid, stored, real_from = _real_cubes(cfg, what.source)
    spacing_mm = stored if what.spacing_mm is None else float(what.spacing_mm)
    out_spacing = spacing_mm * cube / size
    encoded = encode(model, real)
    generated = generate(what.method, encoded, what.n, what.seed, **what.options())

    with replace_folder(out, "manifest.json", overwrite) as staging:
        try:
            files, hu_files, central = _write_nodules(staging, generated, size, out_spacing, what, progress)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DatasetError(
                    f"--out {out}: the disk is full ({exc.strerror}); nothing was written there"
                ) from None
            raise
        g = generated
        atomic_savez(
            staging / "mixtures.npz",
            **g.mixtures.arrays(),
            source=g.source,
            group=g.group,
            size=np.int64(size),
            spacing_mm=np.float64(out_spacing),
        )
        gallery = (
            _write_gallery(staging / "gallery.html", real, central, g, what.gallery_rows, seriesuid)
            if what.gallery_rows
            else None
        )
        records = [
            {
                "index": i,
                "file": files[i].name,
                "file_hu": hu_files[i].name if what.hu else "",
                "source": int(g.source[i]),
                "source_seriesuid": str(seriesuid[int(g.source[i])]) if seriesuid is not None else "",
                "group": int(g.group[i]),
                "mass": float(g.mixtures.mass[i]),
            }
            for i in range(what.n)
        ]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(staging / "manifest.csv", buffer.getvalue())
        atomic_write_json(
            staging / "manifest.json",
            {
                "run": str(Path(run_dir).resolve()),
                "real_cubes": real_from,
                "n_real": int(len(real)),
                "method": what.method,
                "options": what.options(),
                "seed": what.seed,
                "n": what.n,
                "format": what.format,
                "training_cube": cube,
                "training_spacing_mm": spacing_mm,
                "size": size,
                "spacing_mm": out_spacing,
                "origin_mm": [-(size - 1) / 2.0 * out_spacing] * 3,
                "components": encoded.components,
                "values": "normalised intensities (gmmkit.data.intensity.normalize_hu units: 0 = -1000 HU, "
                "1 = +400 HU), float32",
                "values_hu": "int16 Hounsfield units (window -1000..400)" if what.hu else None,
                "mixtures": "mixtures.npz",
                "gallery": "gallery.html" if gallery else None,
                "files": records,
            },
        )
    out = Path(out)
    return Synthesis(
        out,
        [out / f.name for f in files],
        [out / f.name for f in hu_files],
        generated,
        encoded,
        real,
        size,
        central,
        out_spacing,
        out / "manifest.json",
        out / "gallery.html" if gallery else None,
    )


def _write_nodules(
    folder: Path, generated: Generated, size: int, spacing: float, what: SynthesisConfig, progress: bool
) -> tuple[list[Path], list[Path], np.ndarray]:
    """Render and write the nodules one at a time (memory: one cube); returns the files and central slices.
    After the first nodule, the disk must hold the rest at the same size, else nothing more is written."""
    suffix, origin = "." + what.format, (-(size - 1) / 2.0 * spacing,) * 3
    files, hu_files, central = [], [], np.empty((what.n, size, size), np.float32)
    bar = tqdm(total=what.n, desc="writing", unit="nodule", disable=not progress)
    for i, volume in render_each(generated.mixtures, size):
        files.append(write_image(folder / f"nodule_{i:04d}{suffix}", volume, (spacing,) * 3, origin))
        if what.hu:
            hu_volume = np.round(denormalize(np.clip(volume, 0.0, 1.0))).astype(np.int16)
            hu_files.append(write_image(folder / f"nodule_{i:04d}_hu{suffix}", hu_volume, (spacing,) * 3, origin))
        central[i] = central_slices(volume[None])[0]
        if i == 0 and what.n > 1:
            each = sum(f.stat().st_size for f in folder.iterdir())
            free = shutil.disk_usage(folder).free
            if free < 1.2 * each * (what.n - 1):
                raise OSError(
                    errno.ENOSPC,
                    f"{free / 2**20:.0f} MB free, the {what.n} nodules need about {each * what.n / 2**20:.0f} MB",
                )
        bar.update()
    bar.close()
    return files, hu_files, central


def gallery_figure(
    real: np.ndarray,
    central: np.ndarray,
    generated: Generated,
    rows: int = 6,
    per_row: int = 4,
    seriesuid: np.ndarray | None = None,
):
    """Plotly figure: for up to ``rows`` real nodules (cubes), their central slice beside those of their
    offspring (``central``: the generated nodules' central slices, or the nodules themselves)."""
    from ..plots.gallery import nodule_gallery  # heavy: plotly

    sources = list(dict.fromkeys(int(s) for s in generated.source))[:rows]
    real_slices = central_slices(real)
    new_slices = central if np.ndim(central) == 3 else central_slices(central)
    grid, labels = [], []
    for s in sources:
        children = np.flatnonzero(generated.source == s)[:per_row]
        grid.append([real_slices[s]] + [new_slices[c] for c in children])
        label = f"real {s}"
        if seriesuid is not None and str(seriesuid[s]):
            label += f"<br>…{str(seriesuid[s])[-8:]}"
        labels.append(label)
    titles = ["real"] + [f"generated {j + 1}" for j in range(max(len(r) for r in grid) - 1)]
    return nodule_gallery(
        grid,
        column_titles=titles,
        row_titles=labels,
        title="Central axial slices (z = 0): real nodules and nodules generated from them",
    )


def _write_gallery(path: Path, real, central, generated, rows, seriesuid) -> Path:
    from ..plots import write_html  # heavy: plotly

    return write_html(gallery_figure(real, central, generated, rows=rows, seriesuid=seriesuid), path)
