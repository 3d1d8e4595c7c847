"""Serdab: run deep neural networks on private images on infrastructure the data owner does not trust.

The public API follows the data flow: a model (zoo name, .onnx path or torch module) becomes a
chain of blocks between clean cuts (``open_chain``), each block is profiled (``profile_chain``)
and its output's leakage measured (``measure_leakage``), and the chain is cut into runnable
stages (``write_stages``). Block ranges are inclusive and 0-based everywhere; sizes are bytes,
times carry their unit in the name (``latency_ms``).
"""

from serdab.errors import (
    CutError,
    CutOutOfRangeError,
    ImageSetError,
    InputShapeError,
    ModelError,
    ModelNotFoundError,
    NotACleanCutError,
    NotOnnxError,
    SerdabError,
)
from serdab.graph import Block, Chain, NamedChain, StageSpec, extract_stage, open_chain, stage_ranges, write_stages
from serdab.models import ZOO, build_module, load_model
from serdab.privacy import LeakageReport, default_images, load_image_dir, measure_leakage
from serdab.profile import BlockProfile, Profile, profile_chain

__version__ = "0.1.0"

__all__ = [
    "ZOO",
    "Block",
    "BlockProfile",
    "Chain",
    "CutError",
    "CutOutOfRangeError",
    "ImageSetError",
    "InputShapeError",
    "LeakageReport",
    "ModelError",
    "ModelNotFoundError",
    "NamedChain",
    "NotACleanCutError",
    "NotOnnxError",
    "Profile",
    "SerdabError",
    "StageSpec",
    "__version__",
    "build_module",
    "default_images",
    "extract_stage",
    "load_image_dir",
    "load_model",
    "measure_leakage",
    "open_chain",
    "profile_chain",
    "stage_ranges",
    "write_stages",
]
