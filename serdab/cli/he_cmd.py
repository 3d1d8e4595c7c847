"""`serdab he ...`: train the seed 004 nets, serve them under CKKS, and query the service."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.table import Table

from serdab.choices import HeMode
from serdab.cli.common import console, err_console
from serdab.he.backend import HeError
from serdab.he.train import NETS, digits_28, train_net

__all__ = ["he_app", "read_image"]

he_app = typer.Typer(
    add_completion=False,
    help="Homomorphic-encryption mode (seed 004): the server computes on CKKS ciphertexts only.",
    no_args_is_help=True,
)
DEFAULT_URL = "http://127.0.0.1:8600"


@he_app.command("train")
def train(
    net: Annotated[list[str] | None, typer.Option(help=f"Nets to train: {', '.join(NETS)} (default: both).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the 1,437 training digits.")] = 30,
    seed: int = 0,
    out: Annotated[
        Path | None, typer.Option(help="Directory for the trained weights (NAME-plain.pt, NAME-approx.pt).")
    ] = None,
) -> None:
    """Train seed 004's CNNs, plain and approximated (x^2, average pooling), and report held-out accuracy."""
    table = Table(title=f"seed 004 nets on scikit-learn digits upscaled to 28x28 ({epochs} epochs, seed {seed})")
    for column in ("net", "model", "accuracy", "seconds"):
        table.add_column(column, justify="left" if column in ("net", "model") else "right")
    for name in net or list(NETS):
        for approximated in (False, True):
            with err_console.status(f"training {name} ({'approximated' if approximated else 'plain'})"):
                result = train_net(name, approximated, epochs=epochs, seed=seed)
            kind = "approx" if approximated else "plain"
            table.add_row(name, kind, f"{result.accuracy:.4f}", f"{result.seconds:.1f}")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                torch.save(result.model.state_dict(), out / f"{name}-{kind}.pt")
    console.print(table)


@he_app.command("serve")
def serve(
    model: Annotated[list[str] | None, typer.Option(help=f"Nets to serve: {', '.join(NETS)} (default: both).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP port (0: any free port, printed).")] = 8600,
    max_sessions: Annotated[int, typer.Option(min=1, help="Live sessions (each holds ~120 MB of keys).")] = 4,
    poly_modulus_degree: Annotated[
        int | None, typer.Option(help="Force a ring size N (default: the smallest that gives the depth).")
    ] = None,
) -> None:
    """Serve HE inference: load (training if needed), compile, self-test each model, then listen."""
    from serdab.he.model import HeModel
    from serdab.he.service import create_app
    from serdab.web import listen_http, serve_app

    try:
        listener = listen_http(host, port)  # bound before loading, so a busy port fails at once
    except OSError as exc:
        raise HeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    port = listener.getsockname()[1]
    models = {}
    table = Table(title=f"Serdab HE service on http://{host}:{port} (no secret key held)")
    for column in ("model", "parameters", "rotation keys", "self-test error", "self-test s"):
        table.add_column(column)
    for name in model or list(NETS):
        if name not in NETS:
            raise HeError(f"unknown HE net {name!r}; choose one of {', '.join(NETS)}")
        with err_console.status(f"loading {name}: training if needed, compiling, self-test ..."):
            served = HeModel.trained(name, poly_modulus_degree)
            check = served.self_test()
            served.spec()  # compiles every transfer cut now rather than in the first client's request
        models[name] = served
        table.add_row(
            name,
            served.params.describe(),
            str(len(served.rotation_steps())),
            f"{check.max_error:.1e} (<= {check.tolerance:.1e}, same class)",
            f"{check.seconds:.1f}",
        )
    console.print(table)
    console.print(f"try: serdab he infer digits:0 --url http://{host}:{port}", soft_wrap=True)
    asyncio.run(serve_app(create_app(models, max_sessions), listener))


def read_image(spec: str) -> tuple[np.ndarray, int | None]:
    """(1 x 28 x 28 image in [0, 1], true label or None) from digits:N, an .npy file or an image file."""
    if spec.startswith("digits:"):
        _, _, x_test, y_test = digits_28()
        try:
            index = int(spec.split(":", 1)[1])
            return x_test[index].numpy(), int(y_test[index])
        except (ValueError, IndexError):
            raise HeError(f"{spec!r}: use digits:N with 0 <= N < {len(y_test)} (held-out digits)") from None
    path = Path(spec)
    if not path.exists():
        raise HeError(f"no image {spec!r}: give digits:N, an .npy array or an image file")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError) as error:
            raise HeError(f"{spec}: not a numpy array ({error})") from None
        if array.size != 784:
            raise HeError(f"{spec}: expected 28 x 28 values, got shape {array.shape}")
        return array.reshape(1, 28, 28), None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            grey = picture.convert("L").resize((28, 28))
    except (UnidentifiedImageError, OSError) as error:
        raise HeError(f"{spec}: not a readable image ({error})") from None
    return (np.asarray(grey, dtype=np.float64) / 255.0).reshape(1, 28, 28), None


@he_app.command("infer")
def infer(
    image: Annotated[
        str, typer.Argument(help="digits:N (a held-out digit), an .npy 28x28 array, or an image (white on black).")
    ],
    url: Annotated[str, typer.Option(help="The HE service (serdab he serve).")] = DEFAULT_URL,
    model: Annotated[str, typer.Option(help="Served net to use.")] = "he_cnn5",
    mode: Annotated[HeMode, typer.Option(help="recall (class) or transfer (encrypted features).")] = HeMode.RECALL,
    layer: Annotated[int | None, typer.Option(help="Transfer mode: modules to run (default: the model's).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON.")] = None,
    json_api: Annotated[bool, typer.Option("--json-api", help="Use the JSON + base64 endpoints.")] = False,
) -> None:
    """Encrypt an image here, have the service classify it under CKKS, decrypt the answer here."""
    from serdab.he.client import Client

    pixels, label = read_image(image)
    with err_console.status("generating keys and opening a session ..."):
        client = Client(url, model, json=json_api, layers=[layer] if layer else None)
    with client:
        with err_console.status("encrypted inference ..."):
            values = client.predict(pixels) if mode is HeMode.RECALL else client.features(pixels, layer)
        stats = client.last
    result: dict[str, Any] = {
        "image": image,
        "model": model,
        "mode": str(mode),
        "params": client.params.describe(),
        "key_bytes": client.key_bytes,
        "keygen_s": client.keygen_s,
        "client_s": stats.client_s,
        "server_s": stats.server_s,
        "round_trip_s": stats.round_trip_s,
        "upload_bytes": stats.upload_bytes,
        "download_bytes": stats.download_bytes,
        "e2e_s": stats.client_s + stats.round_trip_s,
        "output": np.asarray(values).ravel().tolist(),
    }
    table = Table(title=f"{model} on {image} under CKKS ({mode})", show_header=False)
    table.add_column("")
    table.add_column("")
    if mode is HeMode.RECALL:
        result["class"] = int(np.argmax(values))
        table.add_row("class", f"{result['class']}" + (f" (true label {label})" if label is not None else ""))
        top = np.argsort(values)[::-1][:3]
        table.add_row("top logits", ", ".join(f"{k}: {values[k]:.2f}" for k in top))
    else:
        table.add_row("features", f"{np.asarray(values).shape} decrypted here, e.g. {np.round(values.ravel()[:4], 3)}")
    table.add_row("parameters", client.params.describe())
    table.add_row(
        "keys (once per session)", f"{client.key_bytes / 2**20:.1f} MiB, generated in {client.keygen_s:.2f} s"
    )
    table.add_row("client (encrypt + decrypt)", f"{stats.client_s * 1000:.0f} ms")
    table.add_row("upload / download", f"{stats.upload_bytes / 1024:.0f} KiB / {stats.download_bytes / 1024:.0f} KiB")
    table.add_row("server", f"{stats.server_s * 1000:.0f} ms")
    table.add_row("end to end (this machine)", f"{result['e2e_s'] * 1000:.0f} ms")
    console.print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
