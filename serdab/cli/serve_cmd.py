"""`serdab serve`, `serdab infer`, `serdab load`, `serdab stress`: secure model serving from the shell."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from serdab.choices import RayIngress, ServeEngine
from serdab.cli.common import EvidenceOpt, JsonOpt, ModelArg, console, err_console, use_evidence, write_json
from serdab.errors import ServeConfigError

__all__ = ["infer", "load", "serve", "stress"]

TrustOpt = Annotated[
    Path | None,
    typer.Option("--trust", help="The owner's trust statement `serdab serve` wrote (needed for --secure)."),
]


def _read_trust(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        trust = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ServeConfigError(f"cannot read the trust statement {path}: {exc}") from None
    if not isinstance(trust, dict):
        raise ServeConfigError(f"{path} is not a trust statement written by `serdab serve`")
    return trust


GATEWAY_ONLY = "Gateway engine only."
RAY_ONLY = "Ray engine only."


def serve(
    model: ModelArg,
    secure: Annotated[int, typer.Option(min=0, help="Enclave replicas (simulated TEE).")] = 1,
    public: Annotated[int, typer.Option(min=0, help="Public replicas (ordinary processes).")] = 1,
    balancer: Annotated[
        str, typer.Option(help="round-robin, least-connections, sed, or epc-aware[:BOUNDARY[:FRACTION[:CYCLES]]].")
    ] = "round-robin",
    autoscale: Annotated[
        str | None, typer.Option(help="MIN:MAX replicas of each kind served, scaled on utilisation (S3ML).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address the front door binds (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Front door HTTP port (0: any free port).")] = 8000,
    enclave_speed: Annotated[
        float, typer.Option(help="Emulated enclave speed relative to this host (1.0: Nitro-like dedicated cores).")
    ] = 1.0,
    monitor_interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between EPC paging samples (S3ML: 1).")
    ] = 1.0,
    trust_file: Annotated[Path, typer.Option(help="Where to write the trust statement clients verify against.")] = Path(
        "serve-trust.json"
    ),
    engine: Annotated[
        ServeEngine, typer.Option(help="gateway (Serdab's own, the default) or ray (Ray Serve; needs the ray extra).")
    ] = ServeEngine.GATEWAY,
    secure_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help=f"TLS pass-through port (default: any free). {GATEWAY_ONLY}")
    ] = None,
    enclave_hosts: Annotated[
        int | None,
        typer.Option(
            min=0,
            help=f"Simulated hosts the enclaves spread over, each with its own EPC (default: auto). {GATEWAY_ONLY}",
        ),
    ] = None,
    grpc: Annotated[
        bool | None,
        typer.Option(
            "--grpc",
            help="Serve the Open Inference Protocol over gRPC too (KServe v2 GRPCInferenceService, as the "
            "Triton and KServe clients speak it): public calls on --grpc-port, secure ones over TLS passed "
            f"through to the enclaves on --secure-grpc-port. {GATEWAY_ONLY} (Ray Serve's gRPC proxy terminates "
            "TLS itself, so a secure call would not end inside an enclave.)",
        ),
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help=f"Public gRPC port, with --grpc (default 8001). {GATEWAY_ONLY}")
    ] = None,
    secure_grpc_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help=f"Secure gRPC (TLS pass-through) port (default: any free). {GATEWAY_ONLY}"),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help=f"Where Ray runs: local (start it here, the default), auto or ray://HOST:PORT. {RAY_ONLY}"),
    ] = None,
    ray_ingress: Annotated[
        RayIngress | None,
        typer.Option(
            help="Ray Serve's front door: haproxy (Ray's HAProxy ingress; Serdab's router names the replica for "
            "each request), proxy (Ray's Python proxy, about 5 ms slower per request) or auto (the default: "
            f"haproxy when Serdab starts Ray, else what the running cluster was started with). {RAY_ONLY}"
        ),
    ] = None,
    evidence: EvidenceOpt = None,
) -> None:
    """Serve MODEL from enclave and public replicas behind one front door, until Ctrl-C.

    Starts a key service in an enclave, builds a measured replica image with the model encrypted
    inside, registers the model key under that image's PCRs, launches the replicas (enclaves get
    the model key and the service TLS key from the key service after attestation) and the front
    door: with the gateway engine, plain HTTP for public requests and TLS pass-through for secure
    ones; with Ray Serve, sealed secure requests. Writes the trust statement (key service PCRs,
    replica PCRs) for `serdab infer --secure --trust FILE` and serdab.Client. A flag of the other
    engine is an error. Everything binds 127.0.0.1 unless --host says otherwise; Ctrl-C stops
    every process it started.
    """
    from serdab.serve.autoscale import AutoscaleConfig, parse_range
    from serdab.serve.config import GatewayOptions, RayOptions, ServeConfig
    from serdab.serve.engine import make_engine

    use_evidence(evidence)  # the key service and the enclave replicas attest in it; the trust statement names it
    scaling = {}
    if autoscale:
        low, high = parse_range(autoscale)
        scaling = {
            kind: AutoscaleConfig(min_replicas=low, max_replicas=high)
            for kind, count in (("enclave", secure), ("public", public))
            if count
        }
    given: dict[str, Any] = {
        "secure_port": secure_port,
        "enclave_hosts": enclave_hosts,
        "grpc": grpc,
        "grpc_port": grpc_port,
        "secure_grpc_port": secure_grpc_port,
    }
    gateway: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if engine is ServeEngine.GATEWAY and gateway.get("grpc") and "grpc_port" not in gateway:
        gateway["grpc_port"] = 8001  # Triton's and KServe's usual gRPC port, beside HTTP's 8000
    ray: dict[str, Any] = {k: v for k, v in (("address", address), ("ingress", ray_ingress)) if v is not None}
    config = ServeConfig(
        model,
        secure=secure,
        public=public,
        balancer=balancer,
        autoscale=scaling,
        host=host,
        port=port,
        enclave_speed=enclave_speed,
        monitor_interval_s=monitor_interval,
        engine=engine,
        gateway=GatewayOptions(**gateway),
        ray=RayOptions(**ray),
    )
    service = make_engine(config, log=err_console.print)

    def report() -> None:
        from serdab.validation import write_private

        token = getattr(service, "admin_token", None)
        if (
            token
        ):  # the token first: whoever waits for the trust statement (a benchmark driving this process) finds both
            write_private(trust_file.with_name(trust_file.stem + ".admin-token"), token.encode())
        trust_file.write_text(json.dumps(service.trust(), indent=2) + "\n")
        rows = service.replica_rows()
        if rows:
            table = Table(title=f"serving {service.model_name} (enclaves simulated; speed and EPC emulated)")
            for column in ("replica", "kind", "host", "port", "pid", "start s"):
                table.add_column(column, justify="right" if column in ("port", "pid", "start s") else "left")
            for r in rows:
                table.add_row(r["id"], r["kind"], r["host"], str(r["port"]), str(r["pid"]), f"{r['start_s']:.2f}")
            console.print(table)
        else:
            counts = service.replica_counts()
            console.print(
                f"serving {service.model_name} on Ray Serve: {counts.get('enclave', 0)} enclave replica(s) "
                f"(simulated TEE, speed and EPC emulated), {counts.get('public', 0)} public"
            )
        for line in service.doors():
            console.print(line)
        console.print(f"trust    {trust_file}  (clients verify the key service and the enclaves against it)")
        console.print(f"try      serdab infer {service.url} synthetic:2 --secure --trust {trust_file}")
        console.print("Ctrl-C stops the front door, every replica and the key service.")

    _serve_until_signalled(service, service.starting, report, handlers_after_start=service.handlers_after_start)


def _serve_until_signalled(
    service: Any, starting: str, report: Callable[[], None], *, handlers_after_start: bool = False
) -> None:
    """Start ``service``, report, serve until Ctrl-C or SIGTERM, then stop everything it started.

    SIGINT is handled even where a shell started us ignoring it. ``handlers_after_start``: Ray's
    driver installs a SIGTERM handler of its own when it starts (which would exit without cleaning
    up), so with Ray ours go in after it; otherwise before, so a signal during start-up is caught."""
    stopped = threading.Event()
    previous: dict[Any, Any] = {}

    def install() -> None:
        previous.update({sig: signal.signal(sig, lambda *_: stopped.set()) for sig in (signal.SIGTERM, signal.SIGINT)})

    if not handlers_after_start:
        install()
    try:
        with err_console.status(starting):
            service.start()
        if handlers_after_start:
            install()
        report()
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with err_console.status("stopping"):
            service.stop()
        err_console.print("stopped")


def _images(specs: list[str], side: int = 224) -> list[tuple[str, Any]]:
    import numpy as np

    out: list[tuple[str, Any]] = []
    for spec in specs:
        if spec.startswith("synthetic:"):
            from serdab.runtime.frames import synthetic_frame

            try:
                count = int(spec.split(":", 1)[1])
            except ValueError:
                raise ServeConfigError(
                    f"synthetic:N takes a number of frames, e.g. synthetic:2 (got {spec!r})"
                ) from None
            out += [(f"synthetic#{i}", synthetic_frame(i, side, side)) for i in range(count)]
            continue
        path = Path(spec)
        try:
            from PIL import Image

            with Image.open(path) as image:
                out.append((path.name, np.asarray(image.convert("RGB"))))
        except (OSError, ValueError):
            raise ServeConfigError(f"{spec} is not an image file (PNG, JPEG, ...) nor synthetic:N") from None
    if not out:
        raise ServeConfigError("give at least one image file or synthetic:N")
    return out


def infer(
    url: Annotated[str, typer.Argument(help="The gateway, e.g. http://127.0.0.1:8000")],
    images: Annotated[list[str], typer.Argument(help="Image files, or synthetic:N for generated camera frames.")],
    secure: Annotated[
        bool, typer.Option("--secure", help="Send to an attested enclave replica (needs --trust).")
    ] = False,
    trust: TrustOpt = None,
    top: Annotated[int, typer.Option(min=1, max=1000, help="Classes per image.")] = 5,
    json_path: JsonOpt = None,
) -> None:
    """Classify images through a gateway (seed 001's batch endpoint): public, or attest-then-send."""
    from serdab.serve.client import Client

    loaded = _images(images)
    with Client(url, trust=_read_trust(trust)) as client:
        predictions = client.predict([p for _, p in loaded], secure=secure, top_k=top)
        attested = client.attested
    table = Table(title=f"{'secure (enclave)' if secure else 'public'} predictions from {url}")
    table.add_column("image")
    table.add_column(f"top {top}: class (score)")
    for (name, _), row in zip(loaded, predictions, strict=True):
        table.add_row(name, ", ".join(f"{p['class']} ({p['score']:.3f})" for p in row))
    console.print(table)
    if attested:
        name, value = next(iter(attested["measurements"].items()), ("measurement", ""))
        console.print(f"attested enclave {attested['identity'][:40]} ({attested['kind']}, {name} {value[:16]}...)")
    rows = [{"image": n, "top": p} for (n, _), p in zip(loaded, predictions, strict=True)]
    write_json(json_path, {"url": url, "secure": secure, "attested": attested, "predictions": rows})


def load(
    url: Annotated[str, typer.Argument(help="The gateway, e.g. http://127.0.0.1:8000")],
    rate: Annotated[float | None, typer.Option(help="Open loop: Poisson arrivals per second.")] = None,
    duration: Annotated[float, typer.Option(help="Open loop: seconds of arrivals.")] = 10.0,
    threads: Annotated[int, typer.Option(min=1, help="Closed loop: concurrent threads (seed 001).")] = 4,
    requests: Annotated[int, typer.Option(min=1, help="Closed loop: requests per thread.")] = 2,
    batch: Annotated[int, typer.Option(min=1, max=64, help="Images per request.")] = 2,
    secure_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of secure requests.")] = 0.0,
    trust: TrustOpt = None,
    cold: Annotated[bool, typer.Option("--cold", help="Count each client's session set-up (attestation).")] = False,
    json_path: JsonOpt = None,
) -> None:
    """Load a gateway: closed loop (threads x requests) or open loop (--rate); latency percentiles, throughput."""
    import httpx
    import numpy as np

    from serdab.serve.load import closed_loop, open_loop, summarise

    trust_data = _read_trust(trust)
    if secure_fraction > 0 and trust_data is None:
        raise ServeConfigError("secure requests need the owner's trust statement: --trust serve-trust.json")
    try:
        info = httpx.get(url.rstrip("/") + "/v1/gateway", timeout=10).json()
        model = str(info["model"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise ServeConfigError(f"no Serdab gateway answers at {url}: {exc}") from None
    from serdab.serve.client import Client

    with Client(url, trust=trust_data, model=model) as probe:  # metadata from whichever kind is served
        healthy = info.get("healthy", {})
        http, base = probe.http(
            secure=bool(healthy.get("enclave")) and not healthy.get("public") and trust_data is not None
        )
        try:
            meta = http.get(f"{base}/v2/models/{model}", timeout=10).json()
            chw = [d if d > 0 else 1 for d in meta["inputs"][0]["shape"][1:]]
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            raise ServeConfigError(f"the gateway at {url} serves no replica that describes {model}") from None
    shape = [batch, *chw]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with err_console.status("loading") as status:

        def progress(done: int, total: int) -> None:
            status.update(f"{done}/{total} requests")

        if rate is not None:
            samples, wall = open_loop(
                url,
                x,
                rate_per_s=rate,
                duration_s=duration,
                secure_fraction=secure_fraction,
                trust=trust_data,
                model=model,
                progress=progress,
                warmup=not cold,
            )
        else:
            samples, wall = closed_loop(
                url,
                x,
                threads=threads,
                requests=requests,
                secure_fraction=secure_fraction,
                trust=trust_data,
                model=model,
                progress=progress,
                warmup=not cold,
            )
    summary = summarise(samples, wall)
    mode = f"open loop, {rate:g}/s Poisson" if rate is not None else f"closed loop, {threads} threads x {requests}"
    table = Table(title=f"{model} at {url}: {mode}, batch {batch}, {secure_fraction:.0%} secure")
    for column in ("kind", "requests", "errors", "min ms", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind in ("all", "secure", "public"):
        s = summary.get(kind)
        if s:
            cells = [f"{s[k]:.1f}" if k in s else "-" for k in ("min_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")]
            table.add_row(kind, str(s["requests"]), str(s["errors"]), *cells)
    console.print(table)
    console.print(f"throughput {summary['throughput_per_s']:.1f} requests/s over {wall:.1f} s")
    for error in summary.get("first_errors", []):
        err_console.print(f"error: {error}")
    if json_path is not None:
        from serdab.bench.serving_bench import plot_latency

        write_json(
            json_path,
            {
                "url": url,
                "mode": mode,
                "batch": batch,
                "secure_fraction": secure_fraction,
                "summary": summary,
                "samples": [s.__dict__ for s in samples],
            },
        )
        plot_latency(samples, json_path.with_suffix(".png"), title=f"{model}: {mode}")
        err_console.print(f"wrote {json_path.with_suffix('.png')}")


def stress(
    url: Annotated[str, typer.Argument(help="The gateway `serdab serve` started.")],
    host: Annotated[str, typer.Option(help="Simulated host whose EPC to occupy (h1, h2, ...).")] = "h1",
    epc: Annotated[str, typer.Option(help="EPC to occupy, e.g. 64MiB (emulated).")] = "64MiB",
    stop: Annotated[str | None, typer.Option(help="Stop this interference enclave instead (its name).")] = None,
    token_file: Annotated[
        Path, typer.Option(help="The admin token `serdab serve` wrote beside the trust statement.")
    ] = Path("serve-trust.admin-token"),
) -> None:
    """Start (or stop) an enclave that occupies emulated EPC on a host, so co-located replicas page (S3ML)."""
    import httpx

    from serdab.cluster.units import parse_bytes

    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise ServeConfigError(f"cannot read the admin token {token_file}: {exc.strerror}") from None
    action, body = ("unstress", {"name": stop}) if stop else ("stress", {"host": host, "epc_bytes": parse_bytes(epc)})
    try:
        reply = httpx.post(
            f"{url.rstrip('/')}/v1/admin/{action}", json=body, timeout=60, headers={"authorization": f"Bearer {token}"}
        )
    except httpx.HTTPError as exc:
        raise ServeConfigError(f"no Serdab gateway answers at {url}: {exc}") from None
    if reply.status_code != 200:
        from serdab.web import error_message

        raise ServeConfigError(error_message(reply))
    result = reply.json()
    if stop:
        console.print(f"stopped {result['stopped']}")
    else:
        console.print(f"started {result['stress']}: {epc} of emulated EPC on {host} (stop: --stop {result['stress']})")
