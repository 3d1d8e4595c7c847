"""A served HE model: the approximated net, its packed and batch programs, and its self-test.

Loading a model compiles it for its CKKS parameters, encodes every layer's weights once, then
proves the whole path on a probe image: throwaway keys (generated here and dropped at once;
client sessions bring their own), encrypt, evaluate, decrypt, compare with the plaintext net.
A model that disagrees is refused, so a server never answers with silently wrong logits.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from serdab.errors import HeError, SelfTestError
from serdab.he.backend import HeBackend, backend_for
from serdab.he.batch import BatchProgram, compile_batch, run_batch
from serdab.he.kernels import EncodedProgram, encode_program, run_packed
from serdab.he.packing import PackedProgram, affine_segments, compile_packed
from serdab.he.params import CkksParams, choose_ckks
from serdab.he.protocol import CutSpec, ModelSpec
from serdab.he.train import TRANSFER_LAYER, digits_28, trained

__all__ = ["HeModel", "SelfTest", "SelfTestError"]


@dataclass(frozen=True)
class SelfTest:
    max_error: float
    tolerance: float
    seconds: float
    same_class: bool


class HeModel:
    """One net under one CKKS parameter set; any prefix of it (transfer mode) compiles on demand."""

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
        self.module = module
        module.eval()
        self.input_shape = tuple(input_shape)
        depth = len(affine_segments(module))
        self.params = params or choose_ckks(depth, slots_needed=int(np.prod(input_shape)))
        self.backend_name = backend
        self.recall_layer = len(module)
        self.transfer_layer = transfer_layer if transfer_layer and 0 < transfer_layer < len(module) else 1
        self._backend = backend_for(self.params, backend)
        self._packed: dict[int, PackedProgram] = {}
        self._encoded: dict[int, EncodedProgram] = {}
        self._batch: dict[int, BatchProgram] = {}
        self.program = self.packed()  # the recall program; compiling it checks the model fits the parameters

    def _prefix(self, layer: int | None) -> nn.Sequential:
        """The first ``layer`` modules (all when None) as a Sequential of their own."""
        return nn.Sequential(*list(self.module)[:layer])

    @classmethod
    def trained(cls, net: str, poly_modulus_degree: int | None = None, epochs: int = 30, seed: int = 0) -> HeModel:
        """A seed 004 net, trained on the bundled digits (cached), with parameters for its depth."""
        module = trained(net, approximated=True, epochs=epochs, seed=seed)
        params = None
        if poly_modulus_degree:
            params = choose_ckks(len(affine_segments(module)), 784, poly_modulus_degree=poly_modulus_degree)
        return cls(net, module, (1, 28, 28), params, transfer_layer=TRANSFER_LAYER.get(net))

    # programs, one per cut point
    def layer(self, layer: int | None) -> int:
        layer = self.recall_layer if layer is None else layer
        if not 1 <= layer <= self.recall_layer:
            raise HeError(f"{self.name} has layers 1..{self.recall_layer}; cannot return its result after {layer}")
        return layer

    def packed(self, layer: int | None = None) -> PackedProgram:
        layer = self.layer(layer)
        if layer not in self._packed:
            self._packed[layer] = compile_packed(
                self._prefix(layer), self.input_shape, self.params.slots, self.params.depth
            )
        return self._packed[layer]

    def rotation_steps(self, layers: list[int | None] | None = None) -> set[int]:
        """Galois keys for the recall program and the given cut points (default: the transfer one)."""
        wanted = [None, self.transfer_layer] if layers is None else layers
        return set().union(*(self.packed(layer).rotation_steps() for layer in wanted))

    # the contract with clients
    def spec(self) -> ModelSpec:
        cuts = []
        for layer in range(1, self.recall_layer + 1):
            program = self.packed(layer)
            out = program.steps[-1].out
            cuts.append(
                CutSpec(
                    layer=layer,
                    shape=list(out.shape),
                    positions=out.positions[:, 0].tolist(),
                    rotation_steps=sorted(program.rotation_steps()),
                )
            )
        return ModelSpec(
            name=self.name,
            backend=self.backend_name,
            params=self.params.as_dict(),
            input_shape=list(self.input_shape),
            input_positions=self.program.input.positions.tolist(),
            cuts=cuts,
            recall_layer=self.recall_layer,
            transfer_layer=self.transfer_layer,
        )

    # evaluation (server side)
    def encoded(self, layer: int | None = None) -> EncodedProgram:
        layer = self.layer(layer)
        if layer not in self._encoded:
            self._encoded[layer] = encode_program(self.packed(layer), self._backend)
        return self._encoded[layer]

    def new_backend(self) -> HeBackend:
        return backend_for(self.params, self.backend_name)

    def infer(self, backend: HeBackend, ct: Any, layer: int | None = None) -> Any:
        missing = self.packed(layer).rotation_steps() - backend.rotation_steps()
        if missing:
            raise HeError(
                f"the session's Galois keys lack rotation steps {sorted(missing)[:8]} that layer {self.layer(layer)} "
                "needs: open a session with keys for it"
            )
        return run_packed(self.encoded(layer), backend, ct)

    def infer_batch(self, backend: HeBackend, cts: list[Any], layer: int | None = None) -> list[Any]:
        size = int(np.prod(self.input_shape))
        if len(cts) != size:
            raise HeError(f"batch mode takes one ciphertext per input value ({size}), got {len(cts)}")
        layer = self.layer(layer)
        if layer not in self._batch:
            self._batch[layer] = compile_batch(self._prefix(layer), self.input_shape)
        return run_batch(self._batch[layer], backend, cts)

    def reference(self, images: np.ndarray | torch.Tensor, layer: int | None = None) -> np.ndarray:
        """The plaintext approximated net up to ``layer`` modules (float64)."""
        block = copy.deepcopy(self.module[: self.layer(layer)]).double()
        x = torch.as_tensor(np.asarray(images), dtype=torch.float64).reshape(-1, *self.input_shape)
        with torch.no_grad():
            return block(x).numpy()

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
