"""New nodules from learnt mixtures: the parameter maths (:mod:`.mixtures`) and the export (:mod:`.export`)."""

from .export import FORMATS, Synthesis, SynthesisConfig, gallery_figure, synthesize
from .mixtures import (
    METHODS,
    Generated,
    Mixtures,
    central_slices,
    cluster,
    encode,
    from_vector,
    generate,
    perturb,
    render,
    sample,
    to_vector,
)

__all__ = [
    "FORMATS",
    "METHODS",
    "Generated",
    "Mixtures",
    "Synthesis",
    "SynthesisConfig",
    "central_slices",
    "cluster",
    "encode",
    "from_vector",
    "gallery_figure",
    "generate",
    "perturb",
    "render",
    "sample",
    "synthesize",
    "to_vector",
]
