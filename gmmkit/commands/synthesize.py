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

from .flags import Flag, add_command, add_flags, values_of

FLAGS = (
    Flag("--run", metavar="RUN_DIR", required=True, help="a run directory (config.json, checkpoint.npz)"),
    Flag("--out", ("out",), metavar="DIR", required=True),
    Flag("--n", ("synthesis.n",), int, "how many nodules (default %(default)s)", default=100),
    Flag("--size", ("synthesis.size",), int, "voxels per side (default: the training cube)", "S"),
    Flag("--method", ("synthesis.method",), help="perturb or sample (default %(default)s)", default="perturb"),
    Flag("--format", ("synthesis.format",), help="nii.gz or mhd (default %(default)s)", default="nii.gz"),
    Flag("--seed", ("synthesis.seed",), int, default=0),
    Flag(
        "--from",
        ("synthesis.source",),
        dest="source",
        metavar="NPZ",
        help="encode these cubes instead of the run's validation split",
    ),
    Flag(
        "--spacing",
        ("synthesis.spacing_mm",),
        float,
        "training voxel size (default: stored in the cubes' .npz, else 1.0)",
        "MM",
    ),
    Flag("--hu", ("synthesis.hu",), action="store_true", help="also write each nodule in Hounsfield units"),
    Flag("--gallery", ("synthesis.gallery_rows",), int, "real nodules in gallery.html (0: none)", "ROWS", default=6),
)
PERTURB = (
    Flag("--mean-jitter", ("synthesis.mean_jitter",), float, "mean shift, in component sigmas", "X", default=0.1),
    Flag("--sigma-jitter", ("synthesis.sigma_jitter",), float, "log-normal sigma scale spread", "X", default=0.1),
    Flag(
        "--concentration", ("synthesis.concentration",), float, "Dirichlet concentration of weights", "C", default=100.0
    ),
)
SAMPLE = (
    Flag("--groups", ("synthesis.groups",), int, "k-means groups of the encoded set", "G", default=1),
    Flag("--temperature", ("synthesis.temperature",), float, "spread of the draws (0: group means)", "T", default=1.0),
)
ENDING = (
    Flag("--overwrite", action="store_true", help="replace the earlier synthesis --out holds"),
    Flag("--no-progress", action="store_true"),
)


def register(sub):
    p = add_command(sub, "synthesize", "generate new nodules from a trained run", run, __doc__)
    add_flags(p, FLAGS)
    add_flags(p, PERTURB, p.add_argument_group("perturb"))
    add_flags(p, SAMPLE, p.add_argument_group("sample"))
    add_flags(p, ENDING)
    return p


def run(args, parser) -> int:
    from ..synthesis.export import SynthesisConfig, synthesize

    what = SynthesisConfig(**values_of(args, "synthesis")).validate()
    result = synthesize(args.run, args.out, what, progress=not args.no_progress, overwrite=args.overwrite)
    print(
        f"wrote {len(result.files)} nodules of {result.size}^3 at {result.spacing_mm:g} mm "
        f"({what.method}, from {len(result.real)} real cubes) to {result.out}; see {result.manifest.name}"
        + (f" and {result.gallery.name}" if result.gallery else ""),
        flush=True,
    )
    return 0
