"""Enclave applications shipped as image sources (copied into an image's code/ by ``build_image``)."""
