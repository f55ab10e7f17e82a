"""``gmmkit synthesize``: new nodules from a trained run's mixtures, rendered and written as images.

Encodes real cubes (the run's validation split, or a ``cubes.npz``) to Gaussian-mixture parameters, makes
new parameter sets (:mod:`gmmkit.synthesis.mixtures`), renders them at any size (the density is
continuous: any size, same extent in mm), and writes the images, the parameters, a manifest and a gallery.
What to make is a :class:`SynthesisConfig`, validated field by field like every gmmkit configuration.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from .. import checks
from ..data.cubes import CubeSet, load_cubes, load_split
from ..data.images import write_image
from ..data.intensity import denormalize
from ..errors import DatasetError, InputError
from ..files import atomic_savez, atomic_write_json, atomic_write_text, existing_path, writable_path
from ..training.rundir import RunDir
from .mixtures import METHODS, Generated, Mixtures, central_slices, encode, generate, render

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
            return {"mean_jitter": self.mean_jitter, "sigma_jitter": self.sigma_jitter,
                    "concentration": self.concentration}
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
    volumes: np.ndarray  # (n, size, size, size) rendered, normalised intensities
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


def synthesize(run_dir: str | os.PathLike, out: str | os.PathLike, what: Optional[SynthesisConfig] = None,
               progress: bool = True) -> Synthesis:
    """Generate ``what.n`` nodules from a trained run and write them to ``out``.

    Images are written at ``spacing_mm * cube / size`` so that they span the same millimetres as the
    training cubes, centred on the world origin. Files in ``out``: ``nodule_0000.<format>`` ... in
    normalised intensities (float32, the units of :func:`gmmkit.data.intensity.normalize_hu`; 0 is
    -1000 HU, 1 is +400 HU), with ``hu`` also ``nodule_0000_hu.<format>`` (int16 HU, intensities clipped to
    the window first); ``mixtures.npz`` (the generated parameters, their source and group); ``gallery.html``
    (central slices of generated nodules beside their source, self-contained); ``manifest.csv`` and,
    written last, ``manifest.json``.
    """
    what = (what or SynthesisConfig()).validate()
    if what.source is not None:
        existing_path("synthesis.source", what.source)
    writable_path("out", out)
    run = RunDir.open(run_dir, "--run")
    cfg = run.config()
    model, _epoch = run.load_model()
    cube = cfg.data.cube
    size = cube if what.size is None else what.size
    real, seriesuid, stored, real_from = _real_cubes(cfg, what.source)
    spacing_mm = stored if what.spacing_mm is None else float(what.spacing_mm)
    out_spacing = spacing_mm * cube / size

    encoded = encode(model, real)
    generated = generate(what.method, encoded, what.n, what.seed, **what.options())
    volumes = render(generated.mixtures, size)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "." + what.format
    origin_xyz = (-(size - 1) / 2.0 * out_spacing,) * 3  # the cube's centre at the world origin
    files, hu_files = [], []
    for i in tqdm(range(what.n), desc="writing", unit="nodule", disable=not progress):
        files.append(write_image(out / f"nodule_{i:04d}{suffix}", volumes[i], (out_spacing,) * 3, origin_xyz))
        if what.hu:
            hu_volume = np.round(denormalize(np.clip(volumes[i], 0.0, 1.0))).astype(np.int16)
            hu_files.append(write_image(out / f"nodule_{i:04d}_hu{suffix}", hu_volume, (out_spacing,) * 3,
                                        origin_xyz))
    g = generated
    atomic_savez(out / "mixtures.npz", **g.mixtures.arrays(), source=g.source, group=g.group,
                 size=np.int64(size), spacing_mm=np.float64(out_spacing))
    gallery = None
    if what.gallery_rows:
        gallery = _write_gallery(out / "gallery.html", real, volumes, g, what.gallery_rows, seriesuid)

    records = []
    for i in range(what.n):
        s = int(g.source[i])
        records.append({"index": i, "file": files[i].name, "file_hu": hu_files[i].name if what.hu else "",
                        "source": s, "source_seriesuid": str(seriesuid[s]) if seriesuid is not None else "",
                        "group": int(g.group[i]), "mass": float(g.mixtures.mass[i])})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(out / "manifest.csv", buffer.getvalue())
    manifest = out / "manifest.json"
    atomic_write_json(manifest, {
        "run": str(run_dir), "real_cubes": real_from, "n_real": int(len(real)), "method": what.method,
        "options": what.options(), "seed": what.seed, "n": what.n, "format": what.format, "training_cube": cube, "training_spacing_mm": spacing_mm, "size": size, "spacing_mm": out_spacing,
        "origin_mm": list(origin_xyz), "components": encoded.components,
        "values": "normalised intensities (gmmkit.data.intensity.normalize_hu units: 0 = -1000 HU, "
                  "1 = +400 HU), float32",
        "values_hu": "int16 Hounsfield units (window -1000..400)" if what.hu else None,
        "mixtures": "mixtures.npz", "gallery": gallery.name if gallery else None, "files": records,
    })
    return Synthesis(out, files, hu_files, generated, encoded, real, volumes, out_spacing, manifest, gallery)


def gallery_figure(real: np.ndarray, volumes: np.ndarray, generated: Generated, rows: int = 6,
                   per_row: int = 4, seriesuid: np.ndarray | None = None):
    """Plotly figure: for up to ``rows`` real nodules, their central slice beside those of their offspring."""
    from ..plots.gallery import nodule_gallery  # heavy: plotly

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
    from ..plots import write_html  # heavy: plotly

    return write_html(gallery_figure(real, volumes, generated, rows=rows, seriesuid=seriesuid), path)
