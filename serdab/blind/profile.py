"""What blinding each block costs, measured on this host: the numbers the planner's third mode needs.

For every block of a chain, its ONNX slice is quantised (``quantize``) and run blinded against a local
honest GPU, timing each part the enclave does: the non-linear steps, drawing masks and removing them
(``enclave_s``), Freivalds' check (``check_s``), ``W r`` computed in the enclave (``wr_s``: per frame in
the in-stream mode, ahead of the stream in the pool mode) and opening a sealed ``W r`` (``pool_open_s``);
and the bytes each linear layer's round trip puts on the enclave-GPU link. A block with an operation
that has no integer form is recorded as not blindable, with the reason.

What the GPU's share costs is not measured here (this host has no GPU): the cost model charges the
block's plain time times the GPU's ``field_factor`` (``serdab.cluster``; docs/blinded.md says why).

Imports only pydantic at module level: the planner reads these profiles without loading torch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from serdab.graph.chain import Chain
    from serdab.profile import Profile

__all__ = ["BlindingProfile", "BlockBlinding", "cached_blinding", "measure_blinding"]

_FORMAT = "8"  # bump when the measured code paths change: cached costs are then re-measured


class BlockBlinding(BaseModel):
    index: int
    blindable: bool
    why_not: str = ""
    layers: int = 0  # linear layers: one enclave-GPU round trip each
    sent_bytes: int = 0  # enclave -> GPU per frame, on the socket (framing and AEAD tag included)
    returned_bytes: int = 0  # GPU -> enclave per frame
    enclave_s: float = 0.0  # host s: non-linear steps, masks, unmasking arithmetic
    entry_s: float = 0.0  # host s: quantising the block's input (paid once, by a blinded stage's first block)
    exit_s: float = 0.0  # host s: its output back to floats (paid by a blinded stage's last block)
    check_s: float = 0.0  # host s: Freivalds' check of every answer
    wr_s: float = 0.0  # host s: W r for every linear layer (the in-stream mode's extra, the pool's precomputation)
    pool_open_s: float = 0.0  # host s: opening the sealed W r of one frame
    pool_bytes: int = 0  # sealed W r of one frame, kept outside the enclave
    gpu_host_s: float = 0.0  # host s: the field products on this CPU (float64; for reference only)


class BlindingProfile(BaseModel):
    model: str
    repeat: int
    blocks: list[BlockBlinding]
    measured_s: float = 0.0
    host: dict[str, str] = Field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=1))


def _block_input_shapes(profile: Profile) -> list[tuple[int, ...]]:
    return [tuple(profile.input_shape)] + [tuple(b.out_shape) for b in profile.blocks[:-1]]


def measure_blinding(
    chain: Chain,
    profile: Profile,
    *,
    repeat: int = 5,
    progress: Callable[[int, int, str], None] | None = None,
    seed: int = 0,
) -> BlindingProfile:
    """Blind every block of ``chain`` on this host and time what the enclave does (min of ``repeat`` runs)."""
    import platform

    import numpy as np

    from serdab.blind.blinded import BlindedRunner, HonestGpu, field_payload
    from serdab.blind.kernels import dequantise
    from serdab.blind.quantize import ACT_BITS, quantize_model
    from serdab.framing import message_bytes
    from serdab.graph.stages import extract_stage

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    blocks: list[BlockBlinding] = []
    shapes = _block_input_shapes(profile)
    for block, shape in zip(chain.blocks, shapes, strict=True):
        try:
            model = quantize_model(
                extract_stage(chain, block.index, block.index), f"{profile.model} block {block.index}"
            )
        except ValueError as exc:
            blocks.append(BlockBlinding(index=block.index, blindable=False, why_not=str(exc)))
            continue
        x = rng.standard_normal(shape).astype(np.float32)
        gpu = HonestGpu(model)
        best: dict[str, float] = {}
        frame = 0
        for _ in range(max(1, repeat)):
            own: dict[bool, float] = {}  # the enclave's own time per frame, with and without the check
            for integrity in (True, False):
                runner = BlindedRunner(model, gpu, mode="in-stream", integrity=integrity, seed=seed)
                runner.run(frame, x)  # a first pass builds Freivalds' vectors (once per key epoch, not per frame)
                runner.timings.clear()
                t0 = time.perf_counter()
                out = runner.run(frame + 1, x)
                t = runner.timings
                own[integrity] = time.perf_counter() - t0 - t["gpu"] - t["unmask"] - t["entry"]
                frame += 2
            t2 = time.perf_counter()
            dequantise(out, ACT_BITS)  # as the stage worker hands it on
            exit_s = time.perf_counter() - t2
            pool = BlindedRunner(model, gpu, mode="pool", seed=seed)
            t1 = time.perf_counter()
            pool.precompute(range(frame, frame + 1), x.shape)
            precompute = time.perf_counter() - t1
            pool_bytes = pool.pool_bytes
            pool.run(frame, x)
            frame += 1
            sample = {
                "enclave": own[False],
                "checked": own[True],
                "entry": t["entry"],
                "exit": exit_s,
                "wr": min(t["unmask"], precompute),
                "open": pool.timings["unmask"],
                "gpu": t["gpu"],
            }
            best = {k: min(v, best.get(k, v)) for k, v in sample.items()}
        sent = returned = 0
        for index, (in_shape, out_shape) in enumerate(model.linear_shapes(shape)):
            sent += message_bytes(len(field_payload(index, np.zeros(in_shape))))
            returned += message_bytes(len(field_payload(index, np.zeros(out_shape))))
        blocks.append(
            BlockBlinding(
                index=block.index,
                blindable=True,
                layers=len(model.linear_layers),
                sent_bytes=sent,
                returned_bytes=returned,
                enclave_s=max(best["enclave"], 0.0),
                entry_s=best["entry"],
                exit_s=best["exit"],
                check_s=max(best["checked"] - best["enclave"], 0.0),  # Freivalds rides in the enclave's loops
                wr_s=best["wr"],
                pool_open_s=best["open"],
                pool_bytes=pool_bytes,
                gpu_host_s=best["gpu"],
            )
        )
        if progress:
            progress(block.index + 1, len(chain.blocks), block.name)
    return BlindingProfile(
        model=profile.model,
        repeat=repeat,
        blocks=blocks,
        measured_s=time.perf_counter() - started,
        host={"machine": platform.machine(), "processor": platform.processor() or "unknown"},
    )


def cached_blinding(
    chain: Chain,
    profile: Profile,
    *,
    repeat: int = 5,
    refresh: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> BlindingProfile:
    """The blinding profile from the cache (keyed by the model bytes), else measured now and cached."""
    from serdab.models import cache_dir

    digest = hashlib.sha256(chain.model.SerializeToString(deterministic=True))
    digest.update(f"{repeat}:{_FORMAT}".encode())
    path = cache_dir() / "blinding" / f"{profile.model}-{digest.hexdigest()[:16]}.json"
    if path.exists() and not refresh:
        try:
            return BlindingProfile.model_validate_json(path.read_text())
        except ValueError:
            pass  # a corrupt cache is just measured again
    measured = measure_blinding(chain, profile, repeat=repeat, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    measured.save(tmp)
    tmp.replace(path)
    return measured
