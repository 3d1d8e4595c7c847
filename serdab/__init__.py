"""Serdab: run deep neural networks on private images on infrastructure the data owner does not trust.

The public API follows the data flow: a model (zoo name, .onnx path or torch module) becomes a
chain of blocks between clean cuts (``open_chain``), each block is profiled (``profile_chain``)
and its output's leakage measured (``measure_leakage``), and the chain is cut into runnable
stages (``write_stages``). A profile on a ``Cluster`` (``load_cluster``) under a privacy policy
(``parse_policy``) is planned by a registered planner (``get_planner``) into a ``Placement``,
judged by the one ``CostModel`` and checked by the event simulator (``simulate``).

Block ranges are inclusive and 0-based everywhere; cut c is the boundary before block c (cut 0
is the input frame); sizes are bytes, times carry their unit in the name (``latency_ms``,
``chunk_time_s``).
"""

from serdab.cluster import Cluster, load_cluster
from serdab.errors import (
    ClusterError,
    CutError,
    CutOutOfRangeError,
    ImageSetError,
    InfeasibleError,
    InputShapeError,
    ModelError,
    ModelNotFoundError,
    NotACleanCutError,
    NotOnnxError,
    PlanError,
    PolicyError,
    SerdabError,
)
from serdab.graph import Block, Chain, NamedChain, StageSpec, extract_stage, open_chain, stage_ranges, write_stages
from serdab.models import ZOO, build_module, load_model
from serdab.plan import PLANNERS, CostModel, Placement, PlanRequest, Workload, get_planner
from serdab.plan.simulate import simulate
from serdab.privacy import LeakageReport, default_images, load_image_dir, measure_leakage
from serdab.privacy.policy import parse_policy
from serdab.profile import BlockProfile, Profile, profile_chain

__version__ = "0.1.0"

__all__ = [
    "Block",
    "BlockProfile",
    "Chain",
    "Cluster",
    "ClusterError",
    "CostModel",
    "CutError",
    "CutOutOfRangeError",
    "ImageSetError",
    "InfeasibleError",
    "InputShapeError",
    "LeakageReport",
    "ModelError",
    "ModelNotFoundError",
    "NamedChain",
    "NotACleanCutError",
    "NotOnnxError",
    "PLANNERS",
    "Placement",
    "PlanError",
    "PlanRequest",
    "PolicyError",
    "Profile",
    "SerdabError",
    "StageSpec",
    "Workload",
    "ZOO",
    "__version__",
    "build_module",
    "default_images",
    "extract_stage",
    "get_planner",
    "load_cluster",
    "load_image_dir",
    "load_model",
    "measure_leakage",
    "open_chain",
    "parse_policy",
    "profile_chain",
    "simulate",
    "stage_ranges",
    "write_stages",
]
