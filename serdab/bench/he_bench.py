"""Seed 004 (HE-DL / PyCrCNN) table, measured here: packed CKKS vs one BFV ciphertext per pixel.

Per image: client seconds (encrypt + serialise, deserialise + decrypt), upload and download bytes,
transfer time at 72.2 Mb/s (the seed's Wi-Fi 4 link), server seconds, end to end (client + server
+ transfer; HTTP framing on loopback adds ~10 ms, see docs/he.md) and accuracy on held-out digits:
plain net, approximated net, encrypted (the decrypted answer's argmax). Recall mode classifies;
transfer mode returns the first 4 layers' features, on which the client trains a linear SVM and a
fully connected (softmax) classifier, as in the seed's Fig. 4. Batch mode (slot = image) runs a
full ring of images. The baseline runs the same approximated 5-layer net seed 004's way.
Everything runs in this process on this machine's CPU, one thread; nothing is emulated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from serdab.bench import new_table  # noqa: E402
from serdab.he.baseline import BfvPerPixel  # noqa: E402
from serdab.he.model import HeModel  # noqa: E402
from serdab.he.train import digits_28, trained  # noqa: E402

__all__ = ["LINK_BITS_PER_S", "plot", "report", "run"]

LINK_BITS_PER_S = 72.2e6  # seed 004: IEEE 802.11n, one antenna, 64-QAM, 20 MHz


def _costs(client_s: float, server_s: float, upload: int, download: int) -> dict[str, float | int]:
    """One image's figures; the transfer is computed for the seed's link."""
    transfer_s = (upload + download) * 8 / LINK_BITS_PER_S
    return {
        "client_s": client_s,
        "server_s": server_s,
        "upload_bytes": upload,
        "download_bytes": download,
        "transfer_s": transfer_s,
        "e2e_s": client_s + server_s + transfer_s,
    }


def _accuracy(predicted: np.ndarray | list[int], labels: np.ndarray) -> float:
    return float((np.asarray(predicted) == np.asarray(labels)).mean())


def _plain_accuracy(net: str, approximated: bool, x: torch.Tensor, y: torch.Tensor) -> float:
    model = trained(net, approximated)
    with torch.no_grad():
        return _accuracy(model(x).argmax(1).numpy(), y.numpy())


class _Session:
    """A client and a server backend for one model, keys made once (timed and sized)."""

    def __init__(self, model: HeModel, layers: list[int | None]) -> None:
        self.model = model
        self.client = model.new_backend()
        started = time.perf_counter()
        self.client.generate_keys(model.rotation_steps(layers))
        self.keygen_s = time.perf_counter() - started
        keys = self.client.export_public()
        self.key_bytes = sum(len(v) for v in keys.values())
        self.server = model.new_backend()
        self.server.load_public(keys)

    def one(self, image: np.ndarray, layer: int | None) -> tuple[np.ndarray, dict[str, float]]:
        started = time.perf_counter()
        data = self.client.to_bytes(self.client.encrypt(self.model.program.input.pack(image, self.model.params.slots)))
        client_s = time.perf_counter() - started
        started = time.perf_counter()
        ct = self.server.from_bytes(data, level=self.server.top_level)
        answer = self.server.to_bytes(self.model.infer(self.server, ct, layer))
        server_s = time.perf_counter() - started
        started = time.perf_counter()
        out = self.model.packed(layer).steps[-1].out.unpack(self.client.decrypt(self.client.from_bytes(answer)))
        client_s += time.perf_counter() - started
        return out, {"client_s": client_s, "server_s": server_s, "upload": len(data), "download": len(answer)}

    def batch(self, images: np.ndarray, layer: int | None) -> tuple[np.ndarray, dict[str, float]]:
        flat = images.reshape(len(images), -1)
        started = time.perf_counter()
        blobs = [self.client.to_bytes(self.client.encrypt(flat[:, i])) for i in range(flat.shape[1])]
        client_s = time.perf_counter() - started
        started = time.perf_counter()
        cts = [self.server.from_bytes(b, level=self.server.top_level) for b in blobs]
        answers = [self.server.to_bytes(ct) for ct in self.model.infer_batch(self.server, cts, layer)]
        server_s = time.perf_counter() - started
        started = time.perf_counter()
        out = np.stack([self.client.decrypt(self.client.from_bytes(a))[: len(flat)] for a in answers], axis=1)
        client_s += time.perf_counter() - started
        sizes = {"upload": sum(map(len, blobs)), "download": sum(map(len, answers))}
        return out, {"client_s": client_s, "server_s": server_s, **sizes}


def _row(net: str, mode: str, session: _Session, stats: list[dict[str, float]], images: int, **extra: Any) -> dict:
    mean = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
    per = images if mode == "batch" else 1
    client_s, server_s = mean["client_s"] / per, mean["server_s"] / per
    upload, download = int(mean["upload"] / per), int(mean["download"] / per)
    return {
        "net": net,
        "mode": mode,
        "params": session.model.params.as_dict() | {"describe": session.model.params.describe()},
        "images": images,
        **_costs(client_s, server_s, upload, download),
        "key_bytes": session.key_bytes,
        "keygen_s": session.keygen_s,
        "rotation_keys": len(session.client.rotation_steps()),
        **extra,
    }


def _transfer_accuracies(train_f: np.ndarray, y_train: np.ndarray, test_f: np.ndarray, y_test: np.ndarray) -> dict:
    scale = np.abs(train_f).max(axis=0) + 1e-9  # the client normalises its features before training
    svm = LinearSVC(C=1.0, max_iter=20_000, random_state=0).fit(train_f / scale, y_train)
    fc = LogisticRegression(max_iter=5_000).fit(train_f / scale, y_train)
    return {"svm": _accuracy(svm.predict(test_f / scale), y_test), "fc": _accuracy(fc.predict(test_f / scale), y_test)}


def run(progress: Callable[[str], None] = lambda _: None, *, quick: bool = False) -> dict[str, Any]:
    """Packed CKKS recall, transfer and batch modes against one BFV ciphertext per pixel."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = digits_28()
    labels = y_test.numpy()
    counts = {"he_cnn5": 40 if quick else len(labels), "he_cnn6": 10 if quick else 100}
    configs = [("he_cnn5", None), ("he_cnn6", None)] + ([] if quick else [("he_cnn5", 16384)])
    rows: list[dict[str, Any]] = []
    for net, ring in configs:
        progress(f"{net}: training (cached) and compiling")
        model = HeModel.trained(net, ring)
        n = counts[net] if ring is None else 100
        acc_plain = _plain_accuracy(net, False, x_test[:n], y_test[:n])
        acc_approx = _plain_accuracy(net, True, x_test[:n], y_test[:n])
        session = _Session(model, [None, model.transfer_layer])
        # recall, one image per ciphertext
        predicted, agree, stats = [], [], []
        for index in range(n):
            progress(f"{net} N={model.params.poly_modulus_degree}: recall image {index + 1}/{n}")
            logits, stat = session.one(x_test[index].numpy(), None)
            predicted.append(int(logits.argmax()))
            agree.append(predicted[-1] == int(model.reference(x_test[index].numpy())[0].argmax()))
            stats.append(stat)
        accuracy = {"acc_plain": acc_plain, "acc_approx": acc_approx, "acc_encrypted": _accuracy(predicted, labels[:n])}
        rows.append(_row(net, "recall", session, stats, n, **accuracy, agree_with_approx=float(np.mean(agree))))
        # transfer: encrypted features of the test images; classifiers trained on the training set's
        layer = model.transfer_layer
        features, stats = [], []
        for index in range(n):
            progress(f"{net}: transfer image {index + 1}/{n}")
            values, stat = session.one(x_test[index].numpy(), layer)
            features.append(values.ravel())
            stats.append(stat)
        plain_net = trained(net, approximated=False)
        with torch.no_grad():
            plain_train = plain_net[:layer](x_train).reshape(len(x_train), -1).numpy()
            plain_test = plain_net[:layer](x_test[:n]).reshape(n, -1).numpy()
        approx_train = model.reference(x_train, layer).reshape(len(x_train), -1)
        approx_test = model.reference(x_test[:n], layer).reshape(n, -1)
        train_source = "approximated net in plaintext (equal to the decrypted features up to 1e-6)"
        encrypted_train = approx_train
        if net == "he_cnn5" and ring is None:  # the client encrypts its training set too: batch mode
            progress(f"{net}: transfer features of {len(x_train)} training images in batch mode")
            encrypted_train, batch_stat = session.batch(x_train.numpy(), layer)
            encrypted_train = encrypted_train.reshape(len(x_train), -1)
            train_source = f"decrypted, from batch mode ({len(x_train)} images in {batch_stat['server_s']:.0f} s)"
        plain_acc = _transfer_accuracies(plain_train, y_train.numpy(), plain_test, labels[:n])
        approx_acc = _transfer_accuracies(approx_train, y_train.numpy(), approx_test, labels[:n])
        enc_acc = _transfer_accuracies(encrypted_train, y_train.numpy(), np.asarray(features), labels[:n])
        rows.append(
            _row(
                net,
                "transfer",
                session,
                stats,
                n,
                layer=layer,
                features=int(np.asarray(features).shape[1]),
                acc_plain=plain_acc["svm"],
                acc_approx=approx_acc["svm"],
                acc_encrypted=enc_acc["svm"],
                acc_encrypted_fc=enc_acc["fc"],
                acc_approx_fc=approx_acc["fc"],
                classifier_train_features=train_source,
            )
        )
        # batch mode, a full ring of images (the held-out digits repeated), he_cnn5 at the chosen ring
        if net == "he_cnn5" and ring is None:
            slots = model.params.slots
            progress(f"{net}: batch mode, {slots} images in one set of ciphertexts")
            tiled = np.resize(x_test.numpy(), (slots, *x_test.shape[1:]))
            logits, stat = session.batch(tiled, None)
            distinct = logits[: len(labels)]
            agreement = float(np.mean(distinct.argmax(1) == model.reference(x_test.numpy()).argmax(1)))
            accuracy = {
                "acc_plain": _plain_accuracy(net, False, x_test, y_test),
                "acc_approx": _plain_accuracy(net, True, x_test, y_test),
                "acc_encrypted": _accuracy(distinct.argmax(1), labels),
            }
            rows.append(_row(net, "batch", session, [stat], slots, **accuracy, agree_with_approx=agreement))
    # the baseline: one BFV ciphertext per pixel, seed 004's way
    baseline_n = 1 if quick else 3
    baseline = BfvPerPixel(trained("he_cnn5"))
    runs = []
    for index in range(baseline_n):
        progress(f"baseline (BFV, one ciphertext per pixel): image {index + 1}/{baseline_n} (~1 minute each)")
        runs.append(baseline.run(x_test[index].numpy()))
    upload = int(np.mean([r.upload_bytes for r in runs]))
    download = int(np.mean([r.download_bytes for r in runs]))
    client_s = float(np.mean([r.client_s for r in runs]))
    server_s = float(np.mean([r.server_s for r in runs]))
    base = {
        "net": "he_cnn5",
        "scheme": "BFV, one ciphertext per pixel (PyCrCNN-style)",
        "params": baseline.params,
        "images": baseline_n,
        **_costs(client_s, server_s, upload, download),
        "acc_encrypted": _accuracy([int(r.logits.argmax()) for r in runs], labels[:baseline_n]),
        "noise_budget_left_bits": min(r.noise_budget_bits for r in runs),
    }
    ours = next(r for r in rows if r["net"] == "he_cnn5" and r["mode"] == "recall")
    return {
        "link_bits_per_s": LINK_BITS_PER_S,
        "quick": quick,
        "rows": rows,
        "baseline": base,
        "speedup_e2e": base["e2e_s"] / ours["e2e_s"],
        "speedup_server": base["server_s"] / ours["server_s"],
        "wall_s": time.perf_counter() - started,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    base = result["baseline"]
    names = [f"{r['net']} {r['mode']}\nN={r['params']['poly_modulus_degree']}" for r in rows] + ["baseline\nBFV/pixel"]
    parts = [(r["client_s"], r["server_s"], r["transfer_s"]) for r in rows] + [
        (base["client_s"], base["server_s"], base["transfer_s"])
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    bottom = np.zeros(len(parts))
    for index, label in enumerate(("client", "server", f"transfer at {result['link_bits_per_s'] / 1e6:.1f} Mb/s")):
        values = np.array([p[index] for p in parts])
        left.bar(range(len(parts)), values, bottom=bottom, label=label)
        bottom += values
    left.set_yscale("log")
    left.set_ylabel("seconds per image (log)")
    left.set_xticks(range(len(parts)), names, fontsize=7)
    left.set_title(f"end to end per image; packed he_cnn5 is {result['speedup_e2e']:.0f}x faster than the baseline")
    left.legend(fontsize=8)
    width = 0.27
    for offset, key in ((-width, "acc_plain"), (0, "acc_approx"), (width, "acc_encrypted")):
        right.bar([i + offset for i in range(len(rows))], [r[key] for r in rows], width, label=key.removeprefix("acc_"))
    right.set_xticks(range(len(rows)), names[:-1], fontsize=7)
    right.set_ylim(0.5, 1.0)
    right.set_ylabel("held-out accuracy")
    right.set_title("accuracy (transfer rows: linear SVM on the features)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict[str, Any]) -> list[Any]:
    table = new_table(
        f"HE inference per image at {result['link_bits_per_s'] / 1e6:.1f} Mb/s (seed 004's link)",
        (
            "net",
            "mode",
            "N",
            "images",
            "client s",
            "upload KiB",
            "server s",
            "e2e s",
            "keys MiB",
            "acc plain",
            "acc approx",
            "acc encrypted",
        ),
        left=("net", "mode"),
    )
    for r in result["rows"]:
        table.add_row(
            r["net"],
            r["mode"],
            str(r["params"]["poly_modulus_degree"]),
            str(r["images"]),
            f"{r['client_s']:.4f}",
            f"{r['upload_bytes'] / 1024:.0f}",
            f"{r['server_s']:.4f}",
            f"{r['e2e_s']:.4f}",
            f"{r['key_bytes'] / 2**20:.0f}",
            f"{r['acc_plain']:.3f}",
            f"{r['acc_approx']:.3f}",
            f"{r['acc_encrypted']:.3f}",
        )
    b = result["baseline"]
    table.add_row(
        b["net"],
        "baseline BFV/pixel",
        str(b["params"]["poly_modulus_degree"]),
        str(b["images"]),
        f"{b['client_s']:.2f}",
        f"{b['upload_bytes'] / 1024:.0f}",
        f"{b['server_s']:.2f}",
        f"{b['e2e_s']:.2f}",
        "-",
        "-",
        "-",
        f"{b['acc_encrypted']:.3f}",
    )
    return [
        table,
        f"packed he_cnn5 vs baseline: {result['speedup_e2e']:.0f}x end to end, "
        f"{result['speedup_server']:.0f}x server time",
    ]
