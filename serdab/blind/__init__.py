"""Blinded offload of linear layers to an untrusted GPU (Slalom's protocol, seed 000 extended).

The enclave quantises a layer's input to integers, adds a fresh one-time mask in a prime field, the
GPU computes the linear layer on the masked values exactly, and the enclave removes the mask's image
(``W r``) and goes on. Modules: ``field`` (the prime and exact arithmetic bounds), ``quantize`` (a model's
linear layers to integers, the plaintext integer reference), ``masks`` (fresh masks per frame and layer),
``freivalds`` (checking the GPU's answers), ``blinded`` (the blinded pass).

The precomputation modes are named here, with their one rule, so the planner (which must not load
torch) and the blinded pass share them.
"""

__all__ = ["MODES", "mode_error"]

MODES = ("in-stream", "pool", "outsourced")  # where W r comes from (docs/blinded.md)


def mode_error(mode: str, helper: str | None) -> str | None:
    """Why ``mode`` with this W r ``helper`` is not a precomputation setting, or None."""
    if mode not in MODES:
        return f"precomputation mode {mode!r}; choose one of {', '.join(MODES)}"
    if (mode == "outsourced") != (helper is not None):
        return "the outsourced mode, and only it, names the device that computes W r (--blind-helper)"
    return None
