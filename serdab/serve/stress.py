"""An EPC interference enclave (S3ML sec. 5.1, Stress-SGX in its evaluation): it holds emulated EPC
and keeps touching it, so co-located replicas page and slow down through ``serdab.tee.epc``. One
runs per host once asked for; how much it holds is read from a control file, so interference
starts and stops at once (a process start would itself disturb the latency being measured).

Emulated, and named so in every report: the enclave is a real process launched from a measured
image; the EPC it occupies and the paging it causes are the simulated host's counters.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from serdab.tee.image import entrypoint_image

__all__ = ["build_stress_image", "enclave_main"]


def build_stress_image(out_dir: Path) -> Path:
    return entrypoint_image(out_dir / "stress-image", "serdab.serve.stress:enclave_main", name="serdab-epc-stress")


def enclave_main(argv: list[str]) -> int:
    from serdab.tee.nsm import NsmClient

    parser = argparse.ArgumentParser(prog="serdab-epc-stress")
    parser.add_argument("--control", type=Path, required=True, help="file holding the EPC bytes to occupy")
    parser.add_argument("--touch-interval-s", type=float, default=0.01)
    args = parser.parse_args(argv)
    nsm = NsmClient.from_env()
    held = -1
    nsm.ready()
    while True:  # it keeps visiting its pages (Stress-SGX): while the host is over budget, paging never stops
        try:
            wanted = int(args.control.read_text() or 0)
        except (OSError, ValueError):
            wanted = held
        if wanted != held:
            nsm.resident(wanted)  # allocate or free emulated EPC at once, no process start in the way
            held = wanted
        if held > 0:
            nsm.access()
        time.sleep(args.touch_interval_s)
