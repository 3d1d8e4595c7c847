"""Trusted execution: enclave images, backends, attestation documents, verification, sealing, EPC.

How the pieces fit: ``image`` builds and measures images (``entrypoint_image`` is the one way to make
an image whose code only names a function of the measured runtime); ``backend`` launches an image as
an enclave (``simulated``: a child process through ``serdab.proc``, with its NSM in ``nsm``);
``document`` and ``verify`` are the attestation format and its one verifier; ``sealing``, ``epc``
and ``host`` the rest of the simulated hardware. A leaf of the package tree: it imports only the
leaves ``serdab.crypto``, ``serdab.errors``, ``serdab.proc`` and ``serdab.validation`` (tested in
tests/test_imports.py), and neither torch nor onnxruntime.
"""

from serdab.tee.backend import BACKENDS, Enclave, TeeBackend, get_backend
from serdab.tee.document import AttestationDocument
from serdab.tee.epc import DEFAULT_EPC_BYTES, EpcMeter, EpcStats
from serdab.tee.host import SIMULATED_ROOT_CN, HostIdentity
from serdab.tee.image import build_image, load_manifest, measure_image
from serdab.tee.nsm import NsmClient
from serdab.tee.verify import NonceRegistry, VerifiedDocument, aws_nitro_root, verify_attestation

__all__ = [
    "BACKENDS",
    "DEFAULT_EPC_BYTES",
    "SIMULATED_ROOT_CN",
    "AttestationDocument",
    "Enclave",
    "EpcMeter",
    "EpcStats",
    "HostIdentity",
    "NonceRegistry",
    "NsmClient",
    "TeeBackend",
    "VerifiedDocument",
    "aws_nitro_root",
    "build_image",
    "get_backend",
    "load_manifest",
    "measure_image",
    "verify_attestation",
]
