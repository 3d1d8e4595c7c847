"""Inside the enclave process: import the image's entrypoint from code/ and run it.

``python -m serdab.tee.runner IMAGE [ARGS...]``, started by a backend with ``SERDAB_NSM_SOCKET``
set. The entrypoint is ``module:function``; it receives the remaining arguments as a list.

A simulated enclave ends with the process that launched it (its NSM lives there), as an SGX
enclave ends with its host process: a watchdog exits when the launcher is gone, so a launcher
killed without cleaning up (a Ray actor killed hard, a manager SIGKILLed) leaves no enclave behind.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path

from serdab.errors import SerdabError
from serdab.tee.image import load_manifest

WATCH_INTERVAL_S = 0.5


def _end_with_launcher(launcher: int) -> None:
    def watch() -> None:
        while os.getppid() == launcher:
            threading.Event().wait(WATCH_INTERVAL_S)
        os._exit(0)  # reparented: the launcher died; nothing of the enclave may outlive it

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def main(argv: list[str]) -> int:
    _end_with_launcher(os.getppid())
    if not argv:
        print("usage: python -m serdab.tee.runner IMAGE [ARGS...]", file=sys.stderr)
        return 2
    image = Path(argv[0])
    try:
        manifest = load_manifest(image)
        sys.path.insert(0, str(image / "code"))
        module_name, function = manifest.entrypoint.split(":")
        entry = getattr(importlib.import_module(module_name), function)
        result = entry(argv[1:])
    except SerdabError as exc:
        print(f"enclave: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
