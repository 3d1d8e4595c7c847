"""A minimal enclave service: get the service's keys from the KMS, then serve TLS (echo) with them.

Arguments: ``--kms URL --service NAME [--allow-simulated] [--kms-pcr N=HEX ...]``. The enclave
verifies the KMS before asking (its PCRs when given), asks with its own attestation document,
and reports readiness (port, service generation, certificate fingerprint) to its host.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import ssl
import tempfile
import threading
from pathlib import Path

from serdab.kms.client import attest_kms
from serdab.tee.host import HostIdentity
from serdab.tee.nsm import NsmClient
from serdab.validation import write_private


def _serve(conn: ssl.SSLSocket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tls-echo")
    parser.add_argument("--kms", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--allow-simulated", action="store_true")
    parser.add_argument("--kms-pcr", action="append", default=[], help="N=HEX expected PCR of the KMS")
    args = parser.parse_args(argv)
    nsm = NsmClient.from_env()
    expected = {int(i): bytes.fromhex(v) for i, v in (p.split("=", 1) for p in args.kms_pcr)}
    roots = HostIdentity.load_or_create().simulated_roots() if args.allow_simulated else []
    kms = attest_kms(args.kms, expected_pcrs=expected, allow_simulated=args.allow_simulated, simulated_roots=roots)
    keys = kms.release_keys(args.service, nsm)
    kms.close()
    secrets_dir = Path(tempfile.mkdtemp(prefix="serdab-svc-"))
    key_file = secrets_dir / "key.pem"
    write_private(key_file, keys.key_pem.encode())
    (secrets_dir / "cert.pem").write_text(keys.cert_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(secrets_dir / "cert.pem", key_file)
    key_file.unlink()
    listener = socket.create_server(("127.0.0.1", 0))
    fingerprint = hashlib.sha256(keys.key_pem.encode()).hexdigest()
    nsm.ready(port=listener.getsockname()[1], generation=keys.generation, key_sha256=fingerprint)
    while True:
        raw, _ = listener.accept()
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            continue
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()
