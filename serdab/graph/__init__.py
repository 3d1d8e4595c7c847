"""Model graph -> chain of blocks between clean cuts -> runnable stage models."""

from serdab.graph.bind import bind_input_shape, parse_shape
from serdab.graph.chain import Block, Chain, build_chain, tensor_bytes
from serdab.graph.open import NamedChain, open_chain
from serdab.graph.stages import StageSpec, extract_stage, parse_cuts, stage_ranges, write_stages

__all__ = [
    "Block",
    "Chain",
    "NamedChain",
    "open_chain",
    "StageSpec",
    "bind_input_shape",
    "build_chain",
    "extract_stage",
    "parse_cuts",
    "parse_shape",
    "stage_ranges",
    "tensor_bytes",
    "write_stages",
]
