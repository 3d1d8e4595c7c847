"""Cut a chain into runnable stage models and write them with a manifest.

Stage k runs blocks ``first..last`` (inclusive). Extraction copies only the nodes of those
blocks plus the constant nodes and weights they use, so stages can be built for any range
without re-walking the graph (the profiler builds one per block).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from onnx import helper

from serdab.errors import CutOutOfRangeError, NotACleanCutError
from serdab.graph.chain import Chain

__all__ = ["StageSpec", "extract_stage", "parse_cuts", "stage_ranges", "write_stages"]


@dataclass(frozen=True)
class StageSpec:
    """What the manifest records of one stage."""

    index: int
    file: str
    blocks: tuple[int, int]
    input: str
    input_shape: tuple[int, ...]
    input_bytes: int
    outputs: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    output_bytes: int


def parse_cuts(chain: Chain, text: str) -> list[int]:
    """Cuts from "3,7" (block indices) or tensor names ("3,/layer2/Add_output_0"), as block indices.

    A name must be a clean cut of this model; anything else raises with the reason.
    """
    cuts = []
    by_tensor = {b.output: b.index for b in chain.blocks[:-1]}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.lstrip("-").isdigit():
            cuts.append(int(part))
        elif part in by_tensor:
            cuts.append(by_tensor[part])
        else:
            known = set(chain.shapes) | {o for n in chain.model.graph.node for o in n.output}
            if part in known:
                raise NotACleanCutError(
                    f"tensor {part!r} is not a clean cut: other tensors also cross there "
                    "(see `serdab profile` for the blocks; cut after a block index, e.g. --cuts 3)"
                )
            raise CutOutOfRangeError(f"--cuts {part!r} is neither a block index nor a tensor of this model")
    if not cuts:
        raise CutOutOfRangeError("--cuts is empty; give block indices, e.g. --cuts 3,7")
    return cuts


def stage_ranges(chain: Chain, cuts: Sequence[int]) -> list[tuple[int, int]]:
    """Inclusive block ranges for cuts placed after the given block indices."""
    last = len(chain.blocks) - 1
    for cut in cuts:
        if not 0 <= cut < last:
            raise CutOutOfRangeError(
                f"cut {cut} is out of range: this model has {last + 1} blocks, so cuts go after blocks 0..{last - 1}"
            )
    if list(cuts) != sorted(set(cuts)):
        raise CutOutOfRangeError(f"cuts must be increasing and distinct, got {','.join(map(str, cuts))}")
    starts = [0, *[c + 1 for c in cuts]]
    ends = [*cuts, last]
    return list(zip(starts, ends, strict=True))


def extract_stage(chain: Chain, first: int, last: int) -> onnx.ModelProto:
    """A standalone ONNX model computing blocks ``first..last`` of the chain."""
    graph = chain.model.graph
    blocks = chain.blocks[first : last + 1]
    node_ids = [n for b in blocks for n in b.nodes]
    stage_input = blocks[0].input
    outputs = list(chain.output_names) if last == len(chain.blocks) - 1 else [blocks[-1].output]

    needed = {name for n in node_ids for name in graph.node[n].input}
    const_ids: list[int] = []
    for n in sorted(chain.constant_nodes, reverse=True):  # walk back so chains of constants resolve
        if any(out in needed for out in graph.node[n].output):
            const_ids.append(n)
            needed.update(graph.node[n].input)
    nodes = [graph.node[n] for n in sorted([*const_ids, *node_ids])]
    initializers = [t for t in graph.initializer if t.name in needed]
    values = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    stage_graph = helper.make_graph(
        nodes,
        f"{graph.name or 'model'}_blocks_{first}_{last}",
        [values[stage_input]],
        [values[o] for o in outputs],
        initializers,
    )
    stage = helper.make_model(stage_graph, opset_imports=chain.model.opset_import, producer_name="serdab")
    stage.ir_version = chain.model.ir_version
    return stage


def write_stages(chain: Chain, cuts: Sequence[int], out_dir: Path, model_name: str) -> list[StageSpec]:
    """Write stage0.onnx, stage1.onnx, ... and manifest.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    specs: list[StageSpec] = []
    for k, (first, last) in enumerate(stage_ranges(chain, cuts)):
        stage = extract_stage(chain, first, last)
        file = f"stage{k}.onnx"
        onnx.save(stage, out_dir / file)
        in_name = stage.graph.input[0].name
        outs = tuple(o.name for o in stage.graph.output)
        out_shapes = tuple(chain.shapes[o] for o in outs)
        specs.append(
            StageSpec(
                index=k,
                file=file,
                blocks=(first, last),
                input=in_name,
                input_shape=chain.shapes[in_name],
                input_bytes=chain.tensor_bytes(in_name),
                outputs=outs,
                output_shapes=out_shapes,
                output_bytes=sum(chain.tensor_bytes(o) for o in outs),
            )
        )
    manifest = {
        "model": model_name,
        "input_shape": list(chain.input_shape),
        "num_blocks": len(chain.blocks),
        "cuts": list(cuts),
        "stages": [asdict(s) for s in specs],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return specs
