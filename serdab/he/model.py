"""A served HE model: the approximated net, its packed and batch programs, and its self-test.

Loading a model compiles it for its CKKS parameters, encodes every layer's weights once, then
proves the whole path on a probe image: throwaway keys (generated here and dropped at once;
client sessions bring their own), encrypt, evaluate, decrypt, compare with the plaintext net.
A model that disagrees is refused, so a server never answers with silently wrong logits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from serdab.he.backend import HeBackend, HeError, backend_for
from serdab.he.batch import BatchProgram, compile_batch, run_batch
from serdab.he.kernels import EncodedProgram, encode_program, run_packed
from serdab.he.packing import PackedProgram, affine_segments, compile_packed
from serdab.he.params import CkksParams, choose_ckks
from serdab.he.protocol import CutSpec, ModelSpec
from serdab.he.train import TRANSFER_LAYER, digits_28, trained

__all__ = ["HeModel", "SelfTest", "SelfTestError"]


class SelfTestError(HeError):
    """The encrypted path disagrees with the plaintext net: the model must not be served."""


@dataclass(frozen=True)
class SelfTest:
    max_error: float
    tolerance: float
    seconds: float
    same_class: bool


class HeModel:
    def __init__(
        self,
        name: str,
        module: nn.Sequential,
        input_shape: tuple[int, ...] = (1, 28, 28),
        params: CkksParams | None = None,
        backend: str = "tenseal-ckks",
        transfer_layer: int | None = None,
    ) -> None:
        self.name = name
        self.module = module.eval()
        self.input_shape = tuple(input_shape)
        depth = len(affine_segments(module))
        self.params = params or choose_ckks(depth, slots_needed=int(np.prod(input_shape)))
        self.backend_name = backend
        self.program: PackedProgram = compile_packed(module, self.input_shape, self.params.slots, self.params.depth)
        self.batch: BatchProgram = compile_batch(module, self.input_shape)
        self._backend = backend_for(self.params, backend)
        self._encoded: EncodedProgram | None = None
        cuts = self.program.cuts()
        self.transfer_layer = transfer_layer if transfer_layer in cuts else cuts[-2] if len(cuts) > 1 else cuts[-1]

    @classmethod
    def trained(cls, net: str, poly_modulus_degree: int | None = None, epochs: int = 30, seed: int = 0) -> HeModel:
        """A seed 004 net, trained on the bundled digits (cached), with parameters for its depth."""
        module = trained(net, approximated=True, epochs=epochs, seed=seed)
        params = None
        if poly_modulus_degree:
            params = choose_ckks(len(affine_segments(module)), 784, poly_modulus_degree=poly_modulus_degree)
        return cls(net, module, (1, 28, 28), params, transfer_layer=TRANSFER_LAYER.get(net))

    # the contract with clients
    def spec(self) -> ModelSpec:
        cuts = []
        for number, step in enumerate(self.program.steps, start=1):
            cuts.append(
                CutSpec(
                    layer=step.end,
                    shape=list(step.out.shape),
                    positions=step.out.positions[:, 0].tolist(),
                    rotation_steps=sorted(self.program.rotation_steps(number)),
                )
            )
        return ModelSpec(
            name=self.name,
            backend=self.backend_name,
            params=self.params.as_dict(),
            input_shape=list(self.input_shape),
            input_positions=self.program.input.positions.tolist(),
            cuts=cuts,
            recall_layer=cuts[-1].layer,
            transfer_layer=self.transfer_layer,
            batch_cuts=self.program.cuts(),
        )

    def steps_until(self, layer: int | None) -> int:
        layer = self.program.cuts()[-1] if layer is None else layer
        if layer not in self.program.cuts():
            raise HeError(
                f"{self.name} cannot return its result after layer {layer}; cut points: "
                + ", ".join(map(str, self.program.cuts()))
            )
        return self.program.cuts().index(layer) + 1

    # evaluation (server side)
    def encoded(self) -> EncodedProgram:
        if self._encoded is None:
            self._encoded = encode_program(self.program, self._backend)
        return self._encoded

    def new_backend(self) -> HeBackend:
        return backend_for(self.params, self.backend_name)

    def infer(self, backend: HeBackend, ct: Any, layer: int | None = None) -> Any:
        needed = self.program.rotation_steps(self.steps_until(layer))
        missing = needed - backend.rotation_steps()
        if missing:
            raise HeError(f"the session's Galois keys lack rotation steps {sorted(missing)[:8]}")
        return run_packed(self.encoded(), backend, ct, self.steps_until(layer))

    def infer_batch(self, backend: HeBackend, cts: list[Any], layer: int | None = None) -> list[Any]:
        if len(cts) != int(np.prod(self.input_shape)):
            raise HeError(f"batch mode takes one ciphertext per input value ({int(np.prod(self.input_shape))})")
        self.steps_until(layer)
        return run_batch(self.batch, backend, cts, layer)

    def reference(self, images: np.ndarray | torch.Tensor, layer: int | None = None) -> np.ndarray:
        """The plaintext approximated net up to ``layer`` modules (float64)."""
        block = self.module[: layer or len(self.module)]
        x = torch.as_tensor(np.asarray(images), dtype=torch.float64).reshape(-1, *self.input_shape)
        with torch.no_grad():
            return block.double()(x).numpy()

    def self_test(self, probe: np.ndarray | None = None) -> SelfTest:
        """Encrypt, evaluate, decrypt a probe and compare with plaintext; raise SelfTestError if off."""
        started = time.perf_counter()
        if probe is None:
            probe = digits_28()[2][0].numpy()
        client = self.new_backend()
        client.generate_keys(self.program.rotation_steps())
        server = self.new_backend()
        server.load_public(client.export_public())
        ct = server.from_bytes(client.to_bytes(client.encrypt(self.program.input.pack(probe, self.params.slots))))
        out = self.infer(server, ct)
        got = self.program.steps[-1].out.unpack(client.decrypt(out)).ravel()
        expected = self.reference(probe).ravel()
        error = float(np.abs(got - expected).max())
        tolerance = 1e-2 * max(1.0, float(np.abs(expected).max()))
        same = int(got.argmax()) == int(expected.argmax())
        result = SelfTest(error, tolerance, time.perf_counter() - started, same)
        if error > tolerance or not same:
            raise SelfTestError(
                f"{self.name} self-test failed under {self.params.describe()}: encrypted logits differ from the "
                f"plaintext net by {error:.3g} (tolerance {tolerance:.3g}); refusing to serve it"
            )
        return result
