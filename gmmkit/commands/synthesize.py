"""``gmmkit synthesize --run RUN_DIR``: new nodules from a trained run's mixtures, written as images.

Encodes real cubes (the run's validation split, or --from cubes.npz) to Gaussian-mixture parameters,
makes --n new parameter sets (--method perturb: jitter an encoded real nodule; sample: draw from a
Gaussian fitted to the encoded set, per k-means group with --groups), renders them at --size voxels per
side (the density is continuous: any size, same extent in mm), and writes nodule_0000.nii.gz ... in
normalised intensities (plus *_hu files in HU with --hu), mixtures.npz, gallery.html, manifest.csv and
manifest.json to --out: a new or empty folder, or an earlier synthesis that --overwrite replaces once the
new one is complete.
"""
from __future__ import annotations

FLAGS = {"synthesis.n": "--n", "synthesis.size": "--size", "synthesis.method": "--method",
         "synthesis.format": "--format", "synthesis.seed": "--seed", "synthesis.source": "--from",
         "synthesis.spacing_mm": "--spacing", "synthesis.gallery_rows": "--gallery",
         "synthesis.mean_jitter": "--mean-jitter", "synthesis.sigma_jitter": "--sigma-jitter",
         "synthesis.concentration": "--concentration", "synthesis.groups": "--groups",
         "synthesis.temperature": "--temperature"}


def register(sub):
    p = sub.add_parser("synthesize", help="generate new nodules from a trained run",
                       description=__doc__.replace("``", "").strip())
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory (config.json, checkpoint.npz)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--n", type=int, default=100, help="how many nodules (default %(default)s)")
    p.add_argument("--size", type=int, default=None, metavar="S", help="voxels per side (default: the training cube)")
    p.add_argument("--method", default="perturb", help="perturb or sample (default %(default)s)")
    p.add_argument("--format", default="nii.gz", help="nii.gz or mhd (default %(default)s)")
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
    p.add_argument("--overwrite", action="store_true", help="replace the earlier synthesis --out holds")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run, flags=FLAGS)
    return p


def run(args, parser) -> int:
    from ..synthesis.export import SynthesisConfig, synthesize

    what = SynthesisConfig(n=args.n, size=args.size, method=args.method, format=args.format, seed=args.seed,
                           source=args.source, spacing_mm=args.spacing, hu=args.hu, gallery_rows=args.gallery,
                           mean_jitter=args.mean_jitter, sigma_jitter=args.sigma_jitter,
                           concentration=args.concentration, groups=args.groups,
                           temperature=args.temperature).validate()
    result = synthesize(args.run, args.out, what, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"wrote {len(result.files)} nodules of {result.size}^3 at {result.spacing_mm:g} mm "
          f"({what.method}, from {len(result.real)} real cubes) to {result.out}; see {result.manifest.name}"
          + (f" and {result.gallery.name}" if result.gallery else ""), flush=True)
    return 0
