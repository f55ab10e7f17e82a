"""``gmmkit synthesize --run RUN_DIR``: new nodules from a trained run's mixtures, written as images.

Encodes real cubes (the run's validation split, or --from cubes.npz) to Gaussian-mixture parameters,
makes --n new parameter sets (--method perturb: jitter an encoded real nodule; sample: draw from a
Gaussian fitted to the encoded set, per k-means group with --groups), renders them at --size voxels per
side (the density is continuous: any size, same extent in mm), and writes nodule_0000.nii.gz ... in
normalised intensities (plus *_hu files in HU with --hu), mixtures.npz, gallery.html, manifest.csv and
manifest.json to --out.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..cli import CLIError, input_path, output_path
from ..errors import InputError


def register(sub) -> None:
    from ..synthesis import FORMATS, METHODS

    p = sub.add_parser("synthesize", help="generate new nodules from a trained run",
                       description=__doc__.replace("``", "").strip())
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory (config.json, checkpoint.npz)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--n", type=int, default=100, help="how many nodules (default %(default)s)")
    p.add_argument("--size", type=int, default=None, metavar="S", help="voxels per side (default: the training cube)")
    p.add_argument("--method", choices=METHODS, default="perturb")
    p.add_argument("--format", choices=FORMATS, default="nii.gz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from", dest="source", default=None, metavar="NPZ",
                   help="encode these cubes instead of the run's validation split")
    p.add_argument("--spacing", type=float, default=None, metavar="MM",
                   help="training voxel size (default: stored in the cubes' .npz, else 1.0)")
    p.add_argument("--hu", action="store_true", help="also write each nodule in Hounsfield units")
    p.add_argument("--gallery", type=int, default=6, metavar="ROWS", help="real nodules in gallery.html (0: none)")
    g = p.add_argument_group("perturb")
    g.add_argument("--mean-jitter", type=float, default=0.1, metavar="X", help="mean shift, in component sigmas")
    g.add_argument("--sigma-jitter", type=float, default=0.1, metavar="X", help="log-normal sigma scale spread")
    g.add_argument("--concentration", type=float, default=100.0, metavar="C", help="Dirichlet concentration of weights")
    g = p.add_argument_group("sample")
    g.add_argument("--groups", type=int, default=1, metavar="G", help="k-means groups of the encoded set")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="spread of the draws (0: group means)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args, parser) -> int:
    from ..synthesis import synthesize

    if args.n < 1:
        raise CLIError(f"--n: expected a positive number of nodules, received {args.n}")
    if args.size is not None and args.size < 1:
        raise CLIError(f"--size: expected a positive number of voxels, received {args.size}")
    if args.spacing is not None and not (math.isfinite(args.spacing) and args.spacing > 0):
        raise CLIError(f"--spacing: expected a positive number of mm, received {args.spacing}")
    if args.gallery < 0:
        raise CLIError(f"--gallery: expected 0 or more rows, received {args.gallery}")
    if args.method == "perturb":
        for flag, value in (("--mean-jitter", args.mean_jitter), ("--sigma-jitter", args.sigma_jitter)):
            if not (math.isfinite(value) and value >= 0):
                raise CLIError(f"{flag}: expected a finite number >= 0, received {value}")
        if not (math.isfinite(args.concentration) and args.concentration > 0):
            raise CLIError(f"--concentration: expected a positive finite number, received {args.concentration}")
        options = {"mean_jitter": args.mean_jitter, "sigma_jitter": args.sigma_jitter,
                   "concentration": args.concentration}
    else:
        if args.groups < 1:
            raise CLIError(f"--groups: expected a positive integer, received {args.groups}")
        if not (math.isfinite(args.temperature) and args.temperature >= 0):
            raise CLIError(f"--temperature: expected a finite number >= 0, received {args.temperature}")
        options = {"groups": args.groups, "temperature": args.temperature}
    if args.seed < 0:
        raise CLIError(f"--seed: expected 0 or more, received {args.seed}")
    if not (Path(args.run) / "config.json").is_file():
        raise CLIError(f"--run {args.run}: not a gmmkit run directory (no config.json)")
    if args.source is not None:
        input_path("--from", args.source)
    output_path("--out", args.out)
    try:
        result = synthesize(args.run, args.out, n=args.n, size=args.size, method=args.method, format=args.format,
                            seed=args.seed, source=args.source, spacing_mm=args.spacing, hu=args.hu,
                            gallery_rows=args.gallery, options=options, progress=not args.no_progress)
    except ValueError as exc:  # the number of groups is checked once the real cubes are loaded
        if isinstance(exc, InputError) or not str(exc).startswith("groups:"):
            raise
        raise CLIError(f"--groups: {str(exc).partition(': ')[2]}") from None
    print(f"wrote {len(result.files)} nodules of {result.volumes.shape[1]}^3 at {result.spacing_mm:g} mm "
          f"({args.method}, from {len(result.real)} real cubes) to {result.out}; see {result.manifest.name}"
          + (f" and {result.gallery.name}" if result.gallery else ""), flush=True)
    return 0
