# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-ray demo test test-slow test-ray check lint bench clean postgres proto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The optional Ray extra (pipeline on Ray actors, serving on Ray Serve): only `make test-ray` needs it.
RAY_STAMP := $(VENV)/.installed-ray
$(RAY_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,ray]'
	touch $(RAY_STAMP)

install-ray: $(RAY_STAMP)

demo: $(STAMP)
	$(VENV)/bin/serdab demo

lint: $(STAMP)
	$(VENV)/bin/ruff format --check serdab tests bench
	$(VENV)/bin/ruff check serdab tests bench

# The PostgreSQL store tests start their own server; install it when missing (root only).
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ]; then echo "installing PostgreSQL for the store tests"; \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	    else echo "PostgreSQL missing and not root: its store tests will be skipped"; fi; }

# One command runs every check: format, lint, types, the tests with warnings as errors (README examples included).
check: $(STAMP) lint postgres
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -m "not slow and not ray"  # warnings are errors: [tool.pytest.ini_options] filterwarnings

test: check

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Ray tests on a local two-node Ray cluster, one at a time (each shuts Ray down after itself); those that need
# no Ray running here (it would find the session's cluster) in a session of their own; then the
# Ray Serve ones again on a cluster with Ray Serve's HAProxy ingress (a cluster-wide choice)
test-ray: $(RAY_STAMP)
	$(PY) -m pytest -q -m "ray and not ray_alone"
	$(PY) -m pytest -q -m ray_alone
	SERDAB_TEST_RAY_INGRESS=haproxy $(PY) -m pytest -q -m ray tests/test_ray_serve.py -k "not as_a_process"

bench: $(STAMP)
	$(VENV)/bin/serdab bench profile
	$(VENV)/bin/serdab bench placement

# serdab/serve/oip_pb2.py(i) from oip.proto. grpcio-tools 1.78 writes protobuf 6.31 gencode (newer ones need
# protobuf 7, which tritonclient refuses), so it runs in a throwaway venv, never in .venv.
proto:
	rm -rf /tmp/serdab-protoc && $(PYTHON) -m venv /tmp/serdab-protoc
	/tmp/serdab-protoc/bin/pip install --quiet --disable-pip-version-check grpcio-tools==1.78.0
	/tmp/serdab-protoc/bin/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. serdab/serve/oip.proto
	rm -rf /tmp/serdab-protoc

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
