"""Blinded offload of linear layers to an untrusted GPU (Slalom's protocol, seed 000 extended).

The enclave quantises a layer's input to integers, adds a fresh one-time mask in a prime field, the
GPU computes the linear layer on the masked values exactly, and the enclave removes the mask's image
(``W r``) and goes on. Modules: ``field`` (the prime and exact arithmetic bounds), ``quantize`` (a model's
linear layers to integers, the plaintext integer reference), ``masks`` (fresh masks per frame and layer),
``freivalds`` (checking the GPU's answers), ``blinded`` (the blinded pass).
"""
