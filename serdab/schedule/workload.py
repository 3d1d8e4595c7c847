"""CNN requests as seed 003 sees them (sec. III-A): per-layer multiplications, weight bytes, output bytes.

A "layer" is a block of the foundation's chain (conv, ReLU, pooling, FC ... each its own block
for these plain CNNs). Computation is eq. 1-2, the number of multiplications (our MAC count);
memory is eq. 3, weights x 32 bits; the output O is the size of the tensor the layer sends on.
Layer tables are computed once from the zoo models (static counts, no timing) and cached.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from serdab.errors import SerdabError
from serdab.models import cache_dir

__all__ = ["WORKLOADS", "CnnSpec", "LayerSpec", "cnn_spec", "workload"]

# seed 003 sec. IV-A: MNIST on LeNet (28x28 grey), CIFAR-10 on a 6-conv + 2-FC CNN, Stanford Cars on VGG16 at 128x128
CNNS = {"lenet": "lenet5", "cifar": "cifar_cnn", "vgg": "vgg16_128"}
WORKLOADS = {"lenet": ("lenet",), "cifar": ("cifar",), "vgg": ("vgg",), "hetero": ("lenet", "cifar", "vgg")}
_FORMAT = "1"


@dataclass(frozen=True)
class LayerSpec:
    name: str
    mults: int  # eq. 1-2
    weight_bytes: int  # eq. 3 (32-bit weights)
    out_bytes: int  # O: what this layer sends to the next


@dataclass(frozen=True)
class CnnSpec:
    name: str
    model: str
    input_bytes: int
    layers: tuple[LayerSpec, ...]

    @property
    def depth(self) -> int:
        return len(self.layers)


def _measure(model: str) -> dict:
    from serdab.graph import open_chain
    from serdab.profile.counts import block_macs, block_param_bytes, initializer_bytes

    chain = open_chain(model).chain
    sizes = initializer_bytes(chain)
    layers = [
        LayerSpec(
            b.name, block_macs(chain, b.index), block_param_bytes(chain, b.index, sizes), chain.tensor_bytes(b.output)
        )
        for b in chain.blocks
    ]
    return {"model": model, "input_bytes": chain.tensor_bytes(chain.input_name), "layers": [asdict(x) for x in layers]}


def cnn_spec(name: str) -> CnnSpec:
    """The layer table of one of seed 003's CNNs (lenet, cifar, vgg), cached after the first build."""
    if name not in CNNS:
        raise SerdabError(f"unknown CNN {name!r}; seed 003 uses {', '.join(CNNS)}")
    path = cache_dir() / "schedule" / f"{CNNS[name]}-v{_FORMAT}.json"
    if path.exists():
        data = json.loads(path.read_text())
    else:
        data = _measure(CNNS[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return CnnSpec(name, data["model"], data["input_bytes"], tuple(LayerSpec(**x) for x in data["layers"]))


def workload(name: str) -> tuple[CnnSpec, ...]:
    """The CNNs a workload's requests draw from (uniformly for ``hetero``)."""
    if name not in WORKLOADS:
        raise SerdabError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")
    return tuple(cnn_spec(n) for n in WORKLOADS[name])
