"""Serdab's one exception tree: every exception the package raises on purpose is one of these.

The CLI prints one line and exits with ``exit_code(exc)``: 3 for a security refusal (marked [3]
below), 4 for an unavailable backend or service ([4]), 2 for everything else the user can fix.

    SerdabError                      anything the user can cause and fix
    ├── ModelError                   the model cannot be used as given
    │   ├── ModelNotFoundError       no zoo model of that name and no such file
    │   ├── NotOnnxError             the file exists but is not a loadable ONNX model
    │   └── InputShapeError          spatial size unknown/inconsistent; pass --input-shape
    ├── CutError                     a requested partition is impossible
    │   ├── CutOutOfRangeError       the block index does not exist
    │   └── NotACleanCutError        more than one tensor would cross the cut
    ├── ImageSetError                an image directory is missing, empty or unreadable
    ├── AuditError                   an audit request or audit file does not fit the model
    ├── ProfileFileError             a saved profile JSON is missing or not a profile
    ├── ConfigError                  an option is not one Serdab offers (unknown name, missing extra, bad syntax)
    ├── ClusterError                 a cluster YAML is missing or invalid (names the field)
    ├── PolicyError                  a privacy policy string cannot be parsed or applied
    ├── PlanError                    a planning request is malformed (unknown strategy, chunk < 1)
    │   └── InfeasibleError          no placement satisfies memory limits and the privacy policy
    ├── CryptoError                  a cryptographic structure is malformed or does not verify
    │   ├── CoseError                not a well-formed COSE_Sign1, or its signature does not verify
    │   └── EnvelopeError            an envelope is malformed, for another key, or tampered with
    ├── TeeError                     enclaves: backends, images, sealing
    │   ├── TeeUnavailableError  [4] this backend needs hardware or tools this machine lacks
    │   ├── EnclaveImageError        an enclave image is missing, malformed or does not match its manifest
    │   └── SealingError         [3] a sealed blob is tampered with or sealed for another enclave
    ├── AttestationError         [3] an attestation document must not be trusted (one subclass per reason)
    │   ├── MalformedDocumentError   not COSE_Sign1 / not a Nitro-format payload
    │   ├── BadSignatureError        the COSE signature does not verify
    │   ├── UnknownRootError         the certificate chain does not end at a pinned root
    │   ├── CertificateChainError    the chain is not a valid X.509 path (a non-CA signs, names, usage)
    │   ├── SimulatedRootError       a simulated document without allow_simulated
    │   ├── CertificateExpiredError  a certificate in the chain is outside its validity
    │   ├── PcrMismatchError         a PCR differs from the policy's expected value
    │   ├── DebugEnclaveError        all-zero (debug) PCRs without allow_debug
    │   ├── NonceError               nonce missing, different from the one asked for, or replayed
    │   ├── StaleDocumentError       the document is older than the maximum age (or from the future)
    │   ├── UserDataMismatchError    user_data is not what the caller binds (e.g. a TLS certificate hash)
    │   └── TcbMismatchError         the endorsing certificate names another chip or TCB (SEV-SNP)
    ├── KmsError                     the key service refused or could not be reached
    │   ├── KmsRefusedError      [3] the attested enclave does not satisfy the service's policy
    │   ├── KmsUnreachableError  [4] no KMS answered at that address
    │   └── UnknownServiceError      no service registered under that name
    ├── HeError                      homomorphic-encryption input or state is unusable
    │   └── SelfTestError            the encrypted path disagrees with the plaintext net: not served
    ├── RunError                     the pipeline runtime cannot run or finish a stream
    │   ├── FrameSourceError         a video, image directory or synthetic source cannot supply frames
    │   ├── WorkerError              a stage worker failed to start, or kept failing after restarts
    │   ├── WireError                a peer sent something that is not a message, or hung up mid-message
    │   └── LinkIntegrityError   [3] a frame on a link was tampered with, replayed, dropped or reordered,
    │                                or a GPU answered a blinded layer wrongly
    └── ServeError                   model serving cannot start or answer
        ├── ServeConfigError         a serving option is invalid (balancer, autoscale range, replica counts)
        ├── ReplicaError             a replica failed to start or stopped answering
        ├── NoReplicaError       [4] no healthy replica of the asked kind can take the request
        └── InferenceRequestError    a client request is malformed (tensor shape, datatype, image)

Messages say what was wrong and show a valid example, so they can be printed on one line.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "BadSignatureError",
    "CertificateChainError",
    "CertificateExpiredError",
    "ClusterError",
    "ConfigError",
    "CoseError",
    "CryptoError",
    "CutError",
    "CutOutOfRangeError",
    "DebugEnclaveError",
    "EnclaveImageError",
    "EnvelopeError",
    "FaultBudgetError",
    "FrameSourceError",
    "HeError",
    "ImageSetError",
    "AuditError",
    "InfeasibleError",
    "InputShapeError",
    "KmsError",
    "KmsRefusedError",
    "KmsUnreachableError",
    "LinkIntegrityError",
    "MalformedDocumentError",
    "ModelError",
    "ModelNotFoundError",
    "NonceError",
    "NotACleanCutError",
    "NotOnnxError",
    "PcrMismatchError",
    "PlanError",
    "PolicyError",
    "ProfileFileError",
    "RunError",
    "InferenceRequestError",
    "NoReplicaError",
    "ReplicaError",
    "SealingError",
    "SelfTestError",
    "ServeConfigError",
    "ServeError",
    "SerdabError",
    "SimulatedRootError",
    "StaleDocumentError",
    "TcbMismatchError",
    "TeeError",
    "TeeUnavailableError",
    "UnknownRootError",
    "UnknownServiceError",
    "UserDataMismatchError",
    "WireError",
    "WorkerError",
    "exit_code",
]


class SerdabError(Exception):
    """Base of every error a user can cause; carries a one-line message."""


class ModelError(SerdabError):
    """The model cannot be used as given."""


class ModelNotFoundError(ModelError):
    """Neither a zoo name nor an existing file."""


class NotOnnxError(ModelError):
    """The file is not an ONNX model ONNX can load and check."""


class InputShapeError(ModelError):
    """The input shape is dynamic or does not fit the model."""


class CutError(SerdabError):
    """A partition cannot be made where it was asked for."""


class CutOutOfRangeError(CutError):
    """A cut index outside 0..M-2 (cuts go after a block, never after the last)."""


class NotACleanCutError(CutError):
    """More than one tensor would cross the cut."""


class ImageSetError(SerdabError):
    """An image directory cannot supply images."""


class AuditError(SerdabError):
    """An audit names a cut or attack that does not exist, or an audit file is for another model."""


class ClusterError(SerdabError):
    """A cluster description cannot be read or is inconsistent."""


class ConfigError(SerdabError, ValueError):
    """An option or setting is not one Serdab offers (unknown executor, missing extra, bad syntax); not planning."""


class PolicyError(SerdabError):
    """A privacy policy is unknown, malformed or lacks the leakage data it needs."""


class PlanError(SerdabError):
    """A planning request cannot be served as asked."""


class InfeasibleError(PlanError):
    """No placement fits the devices' memory and the privacy policy; the message says why."""


class TeeError(SerdabError):
    """Something about an enclave went wrong."""


class TeeUnavailableError(TeeError):
    """The backend cannot run here; the message says what it needs."""


class EnclaveImageError(TeeError):
    """An enclave image cannot be measured or launched."""


class SealingError(TeeError):
    """A sealed blob cannot be opened by this enclave on this host."""


class AttestationError(SerdabError):
    """An attestation document failed verification; the subclass says why."""


class MalformedDocumentError(AttestationError):
    """Not a COSE_Sign1 document with a Nitro-format payload."""


class BadSignatureError(AttestationError):
    """The COSE signature does not verify with the document's certificate."""


class UnknownRootError(AttestationError):
    """The certificate chain does not lead to a pinned root."""


class CertificateChainError(AttestationError):
    """The chain is not a valid X.509 path: a non-CA signs, a path length or key usage is exceeded,
    an issuer is not its signer's subject, or a signature algorithm is not ECDSA."""


class SimulatedRootError(AttestationError):
    """Signed by the simulated root, and the caller did not allow simulated enclaves."""


class CertificateExpiredError(AttestationError):
    """A certificate in the chain is not valid at the document's time."""


class PcrMismatchError(AttestationError):
    """A measured PCR differs from the expected value."""


class DebugEnclaveError(AttestationError):
    """A debug-mode enclave (all-zero PCRs) where debug is not allowed."""


class NonceError(AttestationError):
    """The nonce is missing, not the one asked for, or used before."""


class StaleDocumentError(AttestationError):
    """The document's timestamp is too old or in the future."""


class UserDataMismatchError(AttestationError):
    """user_data does not carry the binding the caller expects."""


class TcbMismatchError(AttestationError):
    """The endorsing certificate was issued for another chip or TCB than the evidence reports (SEV-SNP)."""


class KmsError(SerdabError):
    """The key service refused a request or could not be reached."""


class KmsRefusedError(KmsError):
    """The key service refused to release keys to this enclave."""


class KmsUnreachableError(KmsError):
    """No key service answered."""


class UnknownServiceError(KmsError):
    """No service of that name is registered with the key service."""


class RunError(SerdabError):
    """The pipeline runtime cannot run or finish a stream."""


class FaultBudgetError(RunError):
    """A device failed more often than the run's fault budget allows, and the run cannot go on without it."""


class FrameSourceError(RunError):
    """A video file, image directory or synthetic source cannot supply frames."""


class WorkerError(RunError):
    """A stage worker failed to start, or kept failing after the allowed restarts."""


class LinkIntegrityError(RunError):
    """A frame on a link failed authentication or arrived out of sequence; ``kind`` says which.

    kind: "tampered" (tag fails), "replayed" (sequence number seen before), "dropped" (a sequence
    number was skipped: dropped or reordered), "wrong-answer" (a GPU's answer to a blinded layer
    failed Freivalds' check, ``serdab.blind``).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ProfileFileError(SerdabError):
    """A saved profile JSON cannot be read."""


class CryptoError(SerdabError):
    """A cryptographic structure is malformed or does not verify."""


class CoseError(CryptoError, ValueError):
    """Not a well-formed COSE_Sign1 structure, or its signature does not verify."""


class EnvelopeError(CryptoError, ValueError):
    """The envelope is malformed, for another key, or was tampered with."""


class HeError(SerdabError):
    """Homomorphic-encryption input or state is unusable (bad ciphertext, keys, parameters)."""


class SelfTestError(HeError):
    """The encrypted path disagrees with the plaintext net: the model must not be served."""


class WireError(RunError):
    """A peer closed the connection mid-message or sent something that is not a message."""


class ServeError(SerdabError):
    """Model serving cannot start or answer."""


class ServeConfigError(ServeError, ValueError):
    """A serving option is invalid; the message names it and shows a valid one."""


class ReplicaError(ServeError):
    """A replica failed to start or stopped answering."""


class NoReplicaError(ServeError):
    """No healthy replica of the asked kind can take the request."""


class InferenceRequestError(ServeError, ValueError):
    """A client's request is malformed: tensor shape, datatype, or an image that does not decode."""


EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_UNAVAILABLE = 2, 3, 4
_REFUSALS = (AttestationError, KmsRefusedError, LinkIntegrityError, SealingError)
_UNAVAILABLE = (TeeUnavailableError, KmsUnreachableError, NoReplicaError)


def exit_code(exc: SerdabError) -> int:
    """3 for a security refusal, 4 for an unavailable backend or service, 2 for other bad input."""
    if isinstance(exc, _REFUSALS):
        return EXIT_REFUSED
    if isinstance(exc, _UNAVAILABLE):
        return EXIT_UNAVAILABLE
    return EXIT_BAD_INPUT
