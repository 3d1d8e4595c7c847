"""Inside the enclave process: import the image's entrypoint from code/ and run it.

``python -m serdab.tee.runner IMAGE [ARGS...]``, started by a backend with ``SERDAB_NSM_SOCKET``
set. The entrypoint is ``module:function``; it receives the remaining arguments as a list.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from serdab.errors import SerdabError
from serdab.tee.image import load_manifest


def main(argv: list[str]) -> int:
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
