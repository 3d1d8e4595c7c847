"""The REST API against a description we did not write: KServe's published OIP OpenAPI document
(tests/data/oip/kserve_rest_predict_v2.yaml, Apache-2.0, source in the file), fuzzed by schemathesis
against a running `ModelService`, at a public replica's own port and through the gateway: no 5xx,
every status the document lists (or 404 for a model or version that is not served, as KServe's own
server answers), every JSON body matching the document's schema for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance
from schemathesis.generation import GenerationMode

from serdab.serve.config import ServeConfig
from serdab.serve.service import ModelService

DOCUMENT = Path(__file__).parent / "data" / "oip" / "kserve_rest_predict_v2.yaml"


def _published() -> dict:
    """The document as published, read as OpenAPI means it: its paths write shell-style `${MODEL_NAME}`,
    which OpenAPI would take as a literal `$` before the parameter (no server has such paths)."""
    text = DOCUMENT.read_text().replace("${MODEL_NAME}", "{MODEL_NAME}").replace("${MODEL_VERSION}", "{MODEL_VERSION}")
    return yaml.safe_load(text)


schema = schemathesis.openapi.from_dict(_published())


@pytest.fixture(scope="module")
def bases():
    with ModelService(ServeConfig("lenet5", secure=0, public=1)) as svc:
        (replica,) = svc.replicas.values()
        yield {"replica": f"http://127.0.0.1:{replica.port}", "gateway": svc.gateway.url}


def test_the_document_is_the_published_one():
    doc = yaml.safe_load(DOCUMENT.read_text())
    assert doc["info"]["license"]["name"] == "Apache 2.0"
    assert len(doc["paths"]) == 6 and "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/infer" in doc["paths"]


@pytest.mark.parametrize("where", ["replica", "gateway"])
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_service_answers_as_the_published_document_says(case, bases, where):
    params = case.path_parameters or {}
    if "MODEL_NAME" in params and len(params["MODEL_NAME"]) % 2 == 0:
        params["MODEL_NAME"] = "lenet5"  # half the cases reach the model, half a name it does not serve
    if "MODEL_VERSION" in params and len(params["MODEL_VERSION"]) % 2 == 0:
        params["MODEL_VERSION"] = "1"
    served = params.get("MODEL_NAME", "lenet5") == "lenet5" and params.get("MODEL_VERSION", "1") == "1"
    body = case.body if isinstance(case.body, dict) else {}
    binary = isinstance(body.get("parameters"), dict) and body["parameters"].get("binary_data_output")
    checks = [not_a_server_error] + ([] if binary else [content_type_conformance, response_schema_conformance])
    response = case.call(base_url=bases[where], timeout=30)
    case.validate_response(response, checks=checks)
    said = f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
    if case.method.lower() != case.operation.method.lower():  # a method the document has not for this path
        assert response.status_code == 405, said
    elif case.meta is not None and case.meta.generation.mode is GenerationMode.NEGATIVE:
        # input the document rules out (or leaves open, like an extra query parameter): refused with a
        # reason in JSON, or served when it is harmless; never a 5xx (checked above)
        if response.status_code >= 400:
            assert response.headers.get("content-type", [""])[0].startswith("application/json"), said
            assert isinstance(response.json().get("error"), str), said
    else:
        listed = {int(code) for code in case.operation.definition.raw["responses"]}
        assert response.status_code in listed or (response.status_code == 404 and not served), said
