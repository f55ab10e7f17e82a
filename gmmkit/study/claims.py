"""The paper's claims, evaluated from a study's results: each holds or not, with the numbers behind it.

Pure functions of the table rows (:class:`gmmkit.study.report.RunResult`) and the runs' epoch records; the
paper's own figures (Section VII, Tables I and II, Fig. 3) stand beside each claim.

==== ==============================================================================================
C1   strong scaling follows the sequential path: its validation losses equal the sequential run's epoch
     by epoch (bit for bit in exact mode, else within ``rtol``)
C2   strong scaling reaches the target at every n
C3   the linear scaling rule diverges at every n > 1
C4   warm-up converges only at small n (every n up to some n0 below the largest); in the first run that
     neither converges nor diverges (the paper's Fig. 3: 8 GPUs) the loss rises while the rate rises
     during warm-up, then stays at a ceiling
C5   weak scaling converges at every n while its efficiency falls with n
==== ==============================================================================================
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from ..checks import is_finite_number

PAPER = {
    "C1": "the optimisation follows the same path through the loss landscape irrespective of the number of "
    "processing units (Sections IV and VII)",
    "C2": "strong scaling converged at every GPU count; efficiency (Table I): 105.17 % at 2 GPUs, 86.81 % at 4, "
    "90.09 % at 8, 58.08 % at 16, 46.25 % at 32",
    "C3": "the linear scaling rule diverged in all GPU configurations but one (Table II: NaN at 2 to 32)",
    "C4": "warm-up converged with 1, 2 and 4 GPUs only (Table II: 84.95 % at 2, 75.49 % at 4, NaN beyond); "
    "with 8 GPUs its loss rose with the learning rate to a ceiling of about 0.042 (Fig. 3)",
    "C5": "weak scaling converged at every GPU count, its efficiency falling (Table II): 96.96 % at 2, 63.86 % at "
    "4, 42.32 % at 8, 19.65 % at 16, 9.45 % at 32",
}
CEILING_RTOL = 0.10  # the losses of the two largest warm-up rates within 10 %: they have reached a ceiling


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    holds: bool
    evidence: dict
    paper: str

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    rows: Sequence, curves: dict, exact: bool = False, rtol: float = 1e-4, warmup_epochs: int = 5
) -> list[Claim]:
    """The five claims. ``rows``: one per (strategy, n) with ``strategy``, ``workers``, ``status``,
    ``epochs`` and ``efficiency`` (NaN where the target was not reached); ``curves``: ``{(strategy, n):
    epoch records}`` with the sequential run under ``("strong", 1)``; ``exact``: strong ran in exact mode,
    so C1 asks for equality to the last bit."""
    by = {(r.strategy, r.workers): r for r in rows}
    ns = sorted({r.workers for r in rows if r.workers > 1})
    return [_c1(curves, ns, exact, rtol), _c2(by, ns), _c3(by, ns), _c4(by, curves, ns, warmup_epochs), _c5(by, ns)]


def _losses(curves: dict, key) -> list:
    return [r.get("val_loss") for r in curves.get(key, [])]


def _c1(curves: dict, ns: list[int], exact: bool, rtol: float) -> Claim:
    sequential = _losses(curves, ("strong", 1))
    evidence = {}
    for n in ns:
        mine = _losses(curves, ("strong", n))
        common = min(len(mine), len(sequential))
        pairs = [(a, b) for a, b in zip(mine[:common], sequential[:common])]
        worst = max(
            (abs(a - b) / abs(b) for a, b in pairs if is_finite_number(a) and is_finite_number(b) and b),
            default=math.inf if not pairs else 0.0,
        )
        evidence[str(n)] = {
            "epochs_compared": common,
            "identical": bool(pairs) and all(a == b for a, b in pairs),
            "largest_relative_difference": worst,
        }
    holds = bool(evidence) and all(
        e["identical"] if exact else e["largest_relative_difference"] <= rtol for e in evidence.values()
    )
    how = "bit for bit (exact mode)" if exact else f"within a relative {rtol:g}"
    return Claim("C1", f"strong scaling follows the sequential path, {how}", holds, evidence, PAPER["C1"])


def _c2(by: dict, ns: list[int]) -> Claim:
    statuses = {str(n): by[("strong", n)].status for n in ns if ("strong", n) in by}
    evidence = {
        "status": statuses,
        "epochs": {str(n): by[("strong", n)].epochs for n in ns if ("strong", n) in by},
        "efficiency_percent": _efficiencies(by, "strong", ns),
    }
    holds = bool(statuses) and all(s == "reached_target" for s in statuses.values())
    return Claim("C2", "strong scaling reaches the target at every n", holds, evidence, PAPER["C2"])


def _c3(by: dict, ns: list[int]) -> Claim:
    statuses = {str(n): by[("lsr", n)].status for n in ns if ("lsr", n) in by}
    holds = bool(statuses) and all(s == "diverged" for s in statuses.values())
    return Claim("C3", "the linear scaling rule diverges at every n > 1", holds, {"status": statuses}, PAPER["C3"])


def _c4(by: dict, curves: dict, ns: list[int], warmup_epochs: int) -> Claim:
    runs = [n for n in ns if ("warmup", n) in by]
    converged = [n for n in runs if by[("warmup", n)].status == "reached_target"]
    n0 = max(converged, default=1)
    only_small = bool(runs) and converged == [n for n in runs if n <= n0] and n0 < max(runs)
    # Fig. 3: the first warm-up run that did not converge, and did not diverge either
    shown = next(
        (
            n
            for n in runs
            if n not in converged
            and by[("warmup", n)].status != "diverged"
            and len(_losses(curves, ("warmup", n))) > warmup_epochs
        ),
        None,
    )
    losses = _losses(curves, ("warmup", shown)) if shown else []
    during, after = losses[:warmup_epochs], losses[warmup_epochs:]
    finite = all(is_finite_number(v) for v in losses)
    rises = finite and bool(during) and during[-1] > (1 + CEILING_RTOL) * min(during)
    level = sorted(after)[len(after) // 2] if finite and after else None
    ceiling = level is not None and all(abs(v - level) <= CEILING_RTOL * level for v in after)
    evidence = {
        "status": {str(n): by[("warmup", n)].status for n in runs},
        "converged_up_to": n0,
        "fig3_workers": shown,
        "loss_during_warmup": during,
        "rises_with_the_rate": rises,
        "ceiling": level if ceiling else None,
    }
    return Claim(
        "C4",
        "warm-up converges only at small n, and its loss rises with the rate to a ceiling",
        only_small and rises and ceiling,
        evidence,
        PAPER["C4"],
    )


def _c5(by: dict, ns: list[int]) -> Claim:
    statuses = {str(n): by[("weak", n)].status for n in ns if ("weak", n) in by}
    eff = _efficiencies(by, "weak", ns)
    values = [eff[str(n)] for n in ns if str(n) in eff and eff[str(n)] is not None]
    falls = len(values) >= 2 and all(b <= a for a, b in zip(values, values[1:]))
    holds = bool(statuses) and all(s == "reached_target" for s in statuses.values()) and falls
    return Claim(
        "C5",
        "weak scaling converges at every n while its efficiency falls with n",
        holds,
        {"status": statuses, "efficiency_percent": eff, "falls": falls},
        PAPER["C5"],
    )


def _efficiencies(by: dict, strategy: str, ns: list[int]) -> dict:
    out = {}
    for n in ns:
        r = by.get((strategy, n))
        if r is not None:
            out[str(n)] = 100.0 * r.efficiency if is_finite_number(r.efficiency) else None
    return out


def to_markdown(claims: Sequence[Claim]) -> str:
    """The claims as a table beside the paper's figures, for ``claims.md`` and the README."""
    lines = ["| claim | holds | measured | the paper |", "|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.id}: {c.statement} | {'yes' if c.holds else 'no'} | {_brief(c)} | {c.paper} |")
    return "\n".join(lines) + "\n"


def _brief(c: Claim) -> str:
    e = c.evidence
    if c.id == "C1":
        return "; ".join(
            f"n={n}: "
            + ("identical" if v["identical"] else f"{v['largest_relative_difference']:.2g}")
            + f" over {v['epochs_compared']} epochs"
            for n, v in e.items()
        )
    parts = [f"n={n}: {s}" for n, s in e.get("status", {}).items()]
    if "efficiency_percent" in e:
        parts.append(
            "efficiency "
            + ", ".join(f"{n}: {'NaN' if v is None else f'{v:.1f} %'}" for n, v in e["efficiency_percent"].items())
        )
    if c.id == "C4":
        parts.append(
            f"n={e['fig3_workers']}: loss {'rises' if e['rises_with_the_rate'] else 'does not rise'} "
            "during warm-up, " + (f"ceiling {e['ceiling']:.4g}" if e["ceiling"] is not None else "no ceiling")
        )
    return "; ".join(parts)
