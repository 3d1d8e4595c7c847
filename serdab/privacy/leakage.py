"""Leakage at every cut: seed 000's Sim(I(L1), I(Lx)) = max over images of the best-map similarity.

The whole model runs once per image with every cut tensor exposed as an extra output, so the
cost is one inference per image plus the metrics. The report keeps, per cut, the worst case
over images and which image produced it: privacy rules must hold for every input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel

from serdab.graph.chain import Chain, expose_cuts
from serdab.onnxrt import make_session
from serdab.privacy.images import LabelledImage, to_model_input
from serdab.privacy.metrics import SSIM_CANDIDATES, best_map_similarity, feature_maps, resolution_of

__all__ = ["CutLeakage", "LeakageReport", "measure_leakage"]


class CutLeakage(BaseModel):
    """Worst-case similarity of the tensor leaving block ``index`` to the input image."""

    index: int
    name: str
    out_shape: list[int]
    resolution: list[int] | None
    pixels: int
    pearson: float
    ssim: float
    mse: float
    worst_image: dict[str, str]


class LeakageReport(BaseModel):
    model: str
    input_shape: list[int]
    images: list[str]
    method: str
    cuts: list[CutLeakage]


_METHOD = (
    "each feature map resized (bilinear) to the input size and min-max normalised; best map and its "
    "inverse per metric (|Pearson| max, SSIM max, MSE min); worst case over images"
)


def measure_leakage(
    chain: Chain,
    model_name: str,
    images: Sequence[LabelledImage],
    *,
    ssim_candidates: int | None = SSIM_CANDIDATES,
    progress: Callable[[int, int, str], None] | None = None,
) -> LeakageReport:
    """Per-cut leakage over ``images`` (cuts are block outputs 0..M-2; the last is the prediction)."""
    if not images:
        raise ValueError("measure_leakage needs at least one image")
    shape = chain.input_shape
    single = (1, *shape[1:])
    session = make_session(expose_cuts(chain), threads=2)
    names = [o.name for o in session.get_outputs()]
    cuts = chain.blocks[:-1]
    worst: dict[int, dict[str, tuple[float, str]]] = {}
    for done, image in enumerate(images):
        tensor, reference = to_model_input(image, single)
        outputs = dict(zip(names, session.run(None, {chain.input_name: tensor}), strict=True))
        for block in cuts:
            sim = best_map_similarity(reference, feature_maps(outputs[block.output]), ssim_candidates)
            slot = worst.setdefault(block.index, {})
            for metric, value, worse in (
                ("pearson", sim.pearson, lambda a, b: a > b),
                ("ssim", sim.ssim, lambda a, b: a > b),
                ("mse", sim.mse, lambda a, b: a < b),
            ):
                if metric not in slot or worse(value, slot[metric][0]):
                    slot[metric] = (value, image.name)
        if progress:
            progress(done + 1, len(images), image.name)
    rows = []
    for block in cuts:
        out_shape = chain.shapes[block.output]
        h, w = resolution_of(out_shape)
        slot = worst[block.index]
        rows.append(
            CutLeakage(
                index=block.index,
                name=block.name,
                out_shape=list(out_shape),
                resolution=[h, w] if len(out_shape) == 4 else None,
                pixels=h * w,
                pearson=slot["pearson"][0],
                ssim=slot["ssim"][0],
                mse=slot["mse"][0],
                worst_image={metric: value[1] for metric, value in slot.items()},
            )
        )
    return LeakageReport(
        model=model_name, input_shape=list(single), images=[i.name for i in images], method=_METHOD, cuts=rows
    )
