"""``gmmkit prepare-luna``: cut a normalised cube around every annotated nodule of LUNA16 (or DICOM) scans.

Reads each annotated scan once with SimpleITK (.mhd under --scans, LUNA's subset0..subset9 included, or
DICOM series under --dicom), samples a world-aligned cube of isotropic --spacing centred on each
annotation's world position (air beyond the scan's border), normalises it like the synthetic set, and
writes cubes.npz for `gmmkit train --dataset`. Annotations whose scan is missing, or whose centre lies
outside their scan, are skipped with a warning; an unreadable scan stops with an error naming it.
"""

from __future__ import annotations

import sys

from ..errors import CLIError
from ..files import writable_path
from .flags import Flag, add_command, add_flags

WHERE = (
    Flag("--scans", ("luna.scans",), metavar="DIR", help="folder with <seriesuid>.mhd + .raw files (any depth)"),
    Flag(
        "--dicom",
        ("luna.dicom",),
        metavar="DIR",
        help="folder with one sub-folder per DICOM series (the CSV's seriesuid is the SeriesInstanceUID)",
    ),
)
FLAGS = (
    Flag(
        "--annotations",
        ("luna.annotations",),
        metavar="CSV",
        required=True,
        help="seriesuid,coordX,coordY,coordZ[,diameter_mm] in world mm (LUNA16 annotations.csv)",
    ),
    Flag("--out", ("out",), metavar="FILE", required=True, help="the .npz to write (e.g. cubes.npz)"),
    Flag("--cube", ("luna.cube",), int, "voxels per side (default %(default)s)", "S", default=16),
    Flag("--spacing", ("luna.spacing_mm",), float, "isotropic voxel size (default %(default)s)", "MM", default=1.0),
    Flag("--jobs", ("luna.jobs",), int, "scans read in parallel (processes)", "N", default=1),
    Flag("--no-progress", action="store_true", help="no progress bar"),
)


def register(sub):
    p = add_command(sub, "prepare-luna", "cut nodule cubes from LUNA16 .mhd scans or DICOM series", run, __doc__)
    add_flags(p, WHERE, p.add_mutually_exclusive_group(required=True))
    add_flags(p, FLAGS)
    return p


def run(args, parser) -> int:
    if not str(args.out).endswith(".npz"):
        raise CLIError(
            f"--out: expected a file name ending in .npz (gmmkit train --dataset needs one), received {args.out!r}"
        )
    writable_path("--out", args.out, "file")  # before minutes of work, not after
    from ..data.luna import prepare_luna

    prepared = prepare_luna(
        args.annotations,
        scans=args.scans,
        dicom=args.dicom,
        cube=args.cube,
        spacing_mm=args.spacing,
        jobs=args.jobs,
        progress=not args.no_progress,
    )
    for line in prepared.warnings():
        print(f"gmmkit prepare-luna: warning: {line}", file=sys.stderr, flush=True)
    prepared.save(args.out)
    c = prepared.cubes
    padded = int((c.inside_fraction < 1).sum())
    print(
        f"wrote {len(c)} cubes of {args.cube}^3 at {args.spacing:g} mm from {prepared.scans_read} scans to "
        f"{args.out} in {prepared.seconds:.1f} s ({len(prepared.skipped)} annotations skipped, "
        f"{padded} cubes padded with air at a scan border)",
        flush=True,
    )
    return 0
