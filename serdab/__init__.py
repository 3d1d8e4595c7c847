"""Serdab: run deep neural networks on private images on infrastructure the data owner does not trust.

The public API follows the data flow: a model (zoo name, .onnx path or torch module) becomes a
chain of blocks between clean cuts (``open_chain``), each block is profiled (``profile_chain``)
and its output's leakage measured (``measure_leakage``), and the chain is cut into runnable
stages (``write_stages``). A profile on a ``Cluster`` (``load_cluster``) under a privacy policy
(``parse_policy``) is planned by a registered planner (``get_planner``; ``plan_model`` does it in
one call) into a ``Placement``, judged by the one ``CostModel`` and checked by the event
simulator (``simulate``). A whole model is served from enclave and public replicas behind one
gateway by ``ModelService`` and reached, attest-then-send, through ``Client``.

Block ranges are inclusive and 0-based everywhere; cut i is the tensor block i outputs (between
blocks i and i+1; the input frame is not a cut); sizes are bytes, times carry their unit in the name (``latency_ms``,
``chunk_time_s``).

Shared mechanisms have one home each, below the packages that use them: ``serdab.proc`` (child
processes), ``serdab.web`` (HTTP services and their error body), ``serdab.choices`` (the fixed
options of the CLI), ``serdab.raycluster`` (Ray addresses and resources, no Ray import),
``serdab.onnxrt`` (ONNX Runtime sessions) and ``serdab.normalisation`` (input statistics).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access, so `import serdab` (and every
# enclave worker that imports a leaf such as serdab.tee) loads neither torch nor onnxruntime.
_EXPORTS: dict[str, str] = {
    "Cluster": "serdab.cluster",
    "load_cluster": "serdab.cluster",
    **{
        name: "serdab.errors"
        for name in (
            "ClusterError",
            "ConfigError",
            "CutError",
            "CutOutOfRangeError",
            "ImageSetError",
            "InfeasibleError",
            "InputShapeError",
            "ModelError",
            "ModelNotFoundError",
            "NotACleanCutError",
            "NotOnnxError",
            "PlanError",
            "PolicyError",
            "SerdabError",
            "ServeError",
        )
    },
    **{
        name: "serdab.graph"
        for name in (
            "Block",
            "Chain",
            "NamedChain",
            "StageSpec",
            "extract_stage",
            "open_chain",
            "stage_ranges",
            "write_stages",
        )
    },
    "ZOO": "serdab.models",
    "build_module": "serdab.models",
    "load_model": "serdab.models",
    **{
        name: "serdab.plan" for name in ("PLANNERS", "CostModel", "Placement", "PlanRequest", "Workload", "get_planner")
    },
    "simulate": "serdab.plan.simulate",
    "Client": "serdab.serve.client",
    "ModelService": "serdab.serve.service",
    "ServeConfig": "serdab.serve.config",
    "make_engine": "serdab.serve.engine",
    "plan_model": "serdab.plan.model",
    **{name: "serdab.privacy" for name in ("LeakageReport", "default_images", "load_image_dir", "measure_leakage")},
    "parse_policy": "serdab.privacy.policy",
    "BlockProfile": "serdab.profile",
    "Profile": "serdab.profile",
    "profile_chain": "serdab.profile",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'serdab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
