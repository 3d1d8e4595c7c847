"""Fuzz a replica's OIP and seed 001 endpoints from its generated OpenAPI schema: no input gives a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from serdab.models.load import load_model
from serdab.serve.replica import ModelRunner, create_replica_app


def _app():
    runner = ModelRunner("lenet5", load_model("lenet5").proto.SerializeToString())
    return create_replica_app(runner, "public", replica_id="fuzz")


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_replica_fail(case):
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = "lenet5"  # reach the model: an unknown name is one 404 (tested elsewhere)
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"


def test_the_schema_describes_the_inference_bodies():
    paths = _app().openapi()["paths"]
    body = paths["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/octet-stream"}
    assert (
        "images"
        in paths["/predict-public"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )
    with pytest.raises(KeyError):
        paths["/predict-secure"]  # a public replica has no secure route
