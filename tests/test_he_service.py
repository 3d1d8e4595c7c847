"""The HE service end to end: a real `serdab he serve` process, the Python client, every bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import cbor2
import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from serdab.he import Client, HeModel
from serdab.he.approx import Square
from serdab.he.backend import HeError, backend_for
from serdab.he.params import choose_ckks
from serdab.he.protocol import encode_keys
from serdab.he.service import create_app
from serdab.he.train import digits_28


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`serdab he serve --model he_cnn5` as a process (trains, compiles, self-tests), stopped by PID."""
    log = tmp_path_factory.mktemp("he-serve") / "serve.log"
    with log.open("wb") as sink:  # --port 0: the server binds a free port and prints it
        process = subprocess.Popen(
            [sys.executable, "-m", "serdab.cli.app", "he", "serve", "--model", "he_cnn5", "--port", "0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
    try:
        url = None
        for _ in range(1800):  # the printed URL, then /v1/health (training and self-test come first)
            assert process.poll() is None, log.read_text()
            found = re.search(r"--url (http://127\.0\.0\.1:\d+)", log.read_text())
            if found:
                url = found.group(1)
                try:
                    if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        else:
            pytest.fail(f"the HE service did not come up: {log.read_text()[-500:]}")
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Client]:
    with Client(server, "he_cnn5") as opened:
        yield opened


@pytest.fixture(scope="module")
def reference() -> HeModel:
    return HeModel.trained("he_cnn5")


def test_recall_round_trip_through_the_real_service(client: Client, reference: HeModel) -> None:
    images = digits_28()[2][:3].numpy()
    for image in images:
        logits = client.predict(image)
        expected = reference.reference(image)[0]
        assert logits.shape == (10,)
        assert np.abs(logits - expected).max() < 1e-2 and logits.argmax() == expected.argmax()
    stats = client.last
    assert stats.upload_bytes <= 1_000_000 and stats.download_bytes < stats.upload_bytes
    assert 0 < stats.server_s < stats.round_trip_s
    assert client.key_bytes <= 150 * 2**20


def test_transfer_mode_returns_the_chosen_layers_features(client: Client, reference: HeModel) -> None:
    image = digits_28()[2][7].numpy()
    default = client.features(image)
    assert default.shape == (144,)  # seed 004's first 4 layers: conv, x^2, pooling, flatten
    assert np.abs(default - reference.reference(image, 4)[0]).max() < 1e-2
    conv = client.features(image, layer=2)  # conv + x^2: part of the recall program, keys already there
    assert conv.shape == (16, 9, 9)
    assert np.abs(conv - reference.reference(image, 2)[0]).max() < 1e-3
    fc1 = client.features(image, layer=5)  # the first fully connected layer alone
    assert fc1.shape == (72,) and np.abs(fc1 - reference.reference(image, 5)[0]).max() < 1e-2


def test_json_and_base64_endpoints(server: str, reference: HeModel) -> None:
    image = digits_28()[2][11].numpy()
    with Client(server, "he_cnn5", json=True) as json_client:
        logits = json_client.predict(image)
    assert np.abs(logits - reference.reference(image)[0]).max() < 1e-2


def test_every_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(server: str, client: Client) -> None:
    with httpx.Client(base_url=server, timeout=60) as http:
        _bad_inputs(http, client)
    assert client.predict(digits_28()[2][0].numpy()).shape == (10,)  # still serving
    with pytest.raises(HeError, match="cannot reach"):
        Client("http://127.0.0.1:9", "he_cnn5")


def _bad_inputs(http: httpx.Client, client: Client) -> None:
    binary = {"content-type": "application/octet-stream"}
    infer = f"/v1/sessions/{client.session}/infer"

    def status(reply: httpx.Response, code: int, words: str) -> None:
        assert reply.status_code == code, reply.text
        assert words in reply.json()["error"], reply.json()

    status(http.post(infer, content=b"\x00garbage" * 100, headers=binary), 400, "does not load")
    status(http.post(infer, content=b"", headers=binary), 400, "empty")
    status(http.post(infer, content=b"x", headers={"content-type": "text/plain"}), 415, "content type")
    status(http.post(infer, content=b"x" * (4 * 2**20 + 1), headers=binary), 413, "limit")
    status(http.post("/v1/sessions/nope/infer", content=b"x", headers=binary), 404, "no session")
    status(http.get("/v1/models/resnet50"), 404, "no model")
    ct = client.backend.to_bytes(client.backend.encrypt(client.spec.pack(np.zeros(784), client.params.slots)))
    status(http.post(infer, params={"layer": 9}, content=ct, headers=binary), 422, "layers 1..6")
    squared = client.backend.to_bytes(client.backend.square(client.backend.encrypt(np.ones(4))))
    status(http.post(infer, content=squared, headers=binary), 400, "level")
    status(http.post(f"{infer}-json", json={"ciphertext": "***"}), 400, "base64")
    status(http.post(f"{infer}-json", json={"nope": 1}), 422, "body.ciphertext: Field required")
    cbor = {"content-type": "application/cbor"}
    status(http.post("/v1/sessions", content=b"\xff\x00", headers=cbor), 400, "CBOR")
    status(http.post("/v1/sessions", content=cbor2.dumps({"model": "he_cnn5"}), headers=cbor), 400, "must be")
    other = backend_for(choose_ckks(3, 784, poly_modulus_degree=16384))  # right depth, wrong ring
    other.generate_keys([1])
    body = encode_keys("he_cnn5", other.params.as_dict(), other.export_public())
    status(http.post("/v1/sessions", content=body, headers=cbor), 422, "runs under")
    same = backend_for(client.params)
    same.generate_keys([1, 2])  # right parameters, too few rotation keys
    body = encode_keys("he_cnn5", client.spec.params, same.export_public())
    status(http.post("/v1/sessions", content=body, headers=cbor), 422, "lack rotation steps")
    keys = same.export_public()
    keys["public_key"] = keys["public_key"][:100]
    status(http.post("/v1/sessions", content=encode_keys("he_cnn5", client.spec.params, keys), headers=cbor), 400, "")
    status(http.post(f"{infer}-batch", content=cbor2.dumps([b"x"]), headers=cbor), 400, "one ciphertext per input")
    assert http.get("/v1/health").json()["holds_secret_keys"] is False


def test_batch_endpoint_slot_per_image_in_process() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 2, 2), Square(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 3)).eval()
    model = HeModel("tiny", module, (1, 5, 5))
    assert model.self_test(np.random.default_rng(1).uniform(0, 1, (1, 5, 5))).same_class
    app = create_app({"tiny": model})
    with TestClient(app, base_url="http://127.0.0.1") as http, Client("http://127.0.0.1", "tiny", http=http) as c:
        images = np.random.default_rng(2).uniform(0, 1, (20, 1, 5, 5))
        got = c.predict_batch(images)
        expected = model.reference(images)
        assert got.shape == (20, 3) and np.abs(got - expected).max() < 1e-3
        assert c.last.images == 20 and c.last.upload_bytes > 0
        features = c.predict_batch(images, layer=2)
        assert features.shape == (20, 2, 4, 4)
        with pytest.raises(HeError, match="at most"):
            c.predict_batch(np.zeros((c.params.slots + 1, 25)))


def test_a_session_without_a_cuts_keys_is_told_so() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(25, 20), nn.Linear(20, 3)).eval()
    model = HeModel("tiny", module, (1, 5, 5))  # recall: one 25 -> 3 map; layer 2 alone folds 20 outputs
    client, server = model.new_backend(), model.new_backend()
    client.generate_keys(model.rotation_steps([None]))  # recall only
    server.load_public(client.export_public())
    ct = client.encrypt(model.program.input.pack(np.ones(25), model.params.slots))
    assert model.infer(server, ct).size() == 2
    with pytest.raises(HeError, match="lack rotation steps .* layer 2 needs"):
        model.infer(server, ct, layer=2)


def test_a_model_that_disagrees_with_its_plaintext_is_refused() -> None:
    from serdab.he.model import SelfTestError

    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(25, 4)).eval()
    model = HeModel("tiny", module, (1, 5, 5))
    model.encoded()  # weights encoded, then the served net changes under it: the encrypted path disagrees
    with torch.no_grad():
        module[1].weight.mul_(2)
    with pytest.raises(SelfTestError, match="refusing to serve"):
        model.self_test(np.ones((1, 5, 5)))


def test_he_infer_command(server: str, tmp_path, capsys) -> None:
    from serdab.cli.app import main

    target = tmp_path / "answer.json"
    assert main(["he", "infer", "digits:3", "--url", server, "--json", str(target)]) == 0
    out = capsys.readouterr().out
    assert "class" in out and "true label" in out and "end to end" in out
    answer = json.loads(target.read_text())
    assert answer["class"] == int(np.argmax(answer["output"])) and answer["upload_bytes"] <= 1_000_000
    np.save(tmp_path / "digit.npy", digits_28()[2][3].numpy().reshape(28, 28))
    assert main(["he", "infer", str(tmp_path / "digit.npy"), "--url", server, "--mode", "transfer"]) == 0
    assert "(144,)" in capsys.readouterr().out
    np.save(tmp_path / "wrong.npy", np.zeros((5, 5)))
    (tmp_path / "text.png").write_text("not an image")
    for image, words in (
        ("digits:4000", "0 <= N < 360"),
        (str(tmp_path / "wrong.npy"), "expected 28 x 28"),
        (str(tmp_path / "text.png"), "not a readable image"),
        ("nope.png", "no image"),
    ):
        assert main(["he", "infer", image, "--url", server]) == 2
        assert words in capsys.readouterr().err
    assert main(["he", "infer", "digits:1", "--url", server, "--mode", "sideways"]) == 2
    assert "'sideways' is not one of 'recall', 'transfer'" in capsys.readouterr().err
