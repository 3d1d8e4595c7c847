"""Issue 28: blinded offload of linear layers against one enclave and Serdab's plaintext plans.

Predicted on the cluster faithful to seed 000 (``seed000``): for each model, one enclave, Serdab's best
plan without blinding (the exact optimum under the 20x20 rule) and the optimum with blinded stages for
each precomputation mode, with and without Freivalds' check; the speedup over one enclave on T(10,800),
L, P, how busy the enclaves and GPUs are, the sealed pool's size. The enclave's share of a blinded block
is measured on this host (``serdab.blind.profile``) and scaled by the enclave's emulated speed like every
other enclave time; the GPU's share is the block's plain time times ``field_factor`` (assumed: no GPU
here), swept at 1, 2, 8 and 32 (32: an RTX 2080 computing in float64 at 1/32 of its float32 rate).
The outsourced mode adds the first desktop's CPU as the W r device, assumed not to collude with the GPU.

Measured: the runtime runs the one-enclave plan and the blinded plan (pool, integrity on) on one
desktop (``MEASURE_CLUSTER``, the enclave at the ``paper`` cluster's 0.25); ResNet-18's on seed 000's
testbed itself (enclaves at 0.0073), and VGG-16's on its two desktops with the enclaves at 0.25
(``two_desktops``). The helpers compute their float64 products on this CPU for real, so the clock
runs about 20 times slower than emulated time to let them keep up with a GPU at 8: a frame of
ResNet-18's blinded plan (1.1 emulated s) takes some 22 s, and VGG-16's at 0.0073 would take minutes
per frame, hence its faster enclaves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from serdab.bench import new_table  # noqa: E402
from serdab.blind.profile import cached_blinding  # noqa: E402
from serdab.cluster import Cluster, load_cluster  # noqa: E402
from serdab.graph import open_chain  # noqa: E402
from serdab.plan import BlindCosts, PlanCost, Workload, get_planner  # noqa: E402
from serdab.plan.model import plan_request  # noqa: E402
from serdab.profile import cached_profile  # noqa: E402

__all__ = ["AGREEMENT_MODELS", "CONFIGS", "MODELS", "agreement", "plot", "report", "run"]

AGREEMENT_MODELS = ["lenet5_digits", "alexnet", "vgg16", "resnet18", "mobilenetv2", "squeezenet1_1", "googlenet"]

MODELS = ["vgg16", "resnet18", "mobilenetv2"]
CONFIGS = [(mode, integrity) for mode in ("in-stream", "pool", "outsourced") for integrity in (True, False)]
FIELD_FACTORS = [1.0, 2.0, 8.0, 32.0]
CHUNK = 10_800
MEASURE_CLUSTER = {
    "name": "desktop",
    "source": "tee1",
    "devices": [
        {"name": "tee1", "kind": "tee", "trusted": True, "host": "d1", "speed": 0.25, "memory": "93MiB",
         "paging_factor": 5.0},
        {"name": "gpu1", "kind": "gpu", "trusted": False, "host": "d1", "speed": 8.0, "memory": "8GiB"},
    ],
}  # fmt: skip


def _with_cpu(cluster: Cluster) -> Cluster:
    """The cluster plus the source's host CPU as an untrusted device: the outsourced mode's W r device."""
    host = cluster.device(cluster.source).host
    cpu = {"name": "cpu-wr", "kind": "cpu", "trusted": False, "host": host, "speed": 1.0, "memory": "32GiB"}
    return Cluster.model_validate(
        cluster.model_dump(by_alias=True) | {"devices": [*cluster.model_dump(by_alias=True)["devices"], cpu]}
    )


def _with_field_factor(cluster: Cluster, factor: float) -> Cluster:
    devices = [d.model_copy(update={"field_factor": factor}) if not d.trusted else d for d in cluster.devices]
    return cluster.model_copy(update={"devices": devices})


def _busy(cost: PlanCost) -> dict[str, float]:
    """Per device, the share of the period it computes (a blinded stage's helper: its field products)."""
    busy: dict[str, float] = {}
    for s in cost.stages:
        own = s.blinded.enclave_s if s.blinded else s.compute_s
        for d in s.stage.devices:
            busy[d] = busy.get(d, 0.0) + own / s.stage.replicas / cost.period_s
        if s.blinded and s.stage.helper:
            busy[s.stage.helper] = busy.get(s.stage.helper, 0.0) + s.blinded.gpu_s / cost.period_s
    return busy


def _row(model: str, label: str, cost: PlanCost, base: PlanCost | None, blind: BlindCosts | None) -> dict[str, Any]:
    blinded = [s.blinded for s in cost.stages if s.blinded]
    return {
        "model": model,
        "plan": label,
        "placement": cost.placement.describe(),
        "blinding": blind.describe() if blind and cost.placement.helpers else None,
        "chosen_blinding": bool(cost.placement.helpers),
        "T_s": cost.chunk_time_s,
        "L_s": cost.latency_s,
        "P_s": cost.period_s,
        "speedup": (base.chunk_time_s / cost.chunk_time_s) if base else 1.0,
        "busy": _busy(cost),
        "pool_bytes_per_frame": sum(b.pool_bytes for b in blinded),
        "precompute_s_per_frame": sum(b.precompute_s for b in blinded),
        "round_trip_bytes_per_frame": sum(b.sent_bytes + b.returned_bytes for b in blinded),
    }


def predict(cluster: Cluster, model: str, progress: Callable[[str], None]) -> tuple[list[dict[str, Any]], Any]:
    opened = open_chain(model)
    profile, _ = cached_profile(opened.chain, opened.name)
    progress(f"{model}: blinding costs per block")
    measured = cached_blinding(opened.chain, profile)
    workload = Workload.from_profile(profile)
    wide = _with_cpu(cluster)

    def plan(spec: Cluster, strategy: str, blind: BlindCosts | None = None) -> PlanCost:
        request = plan_request(workload, spec, chunk=CHUNK, blind=blind)
        placement = get_planner(strategy).plan(request)
        if placement is None:
            raise RuntimeError(f"{model}: {strategy} has no placement on {spec.name}")
        return request.evaluate(placement)

    base = plan(cluster, "single-tee")
    rows = [
        _row(model, "one enclave", base, base, None),
        _row(model, "Serdab (no blinding)", plan(cluster, "optimal"), base, None),
    ]
    for mode, integrity in CONFIGS:
        helper = "cpu-wr" if mode == "outsourced" else None
        blind = BlindCosts.from_profile(measured, mode, integrity, helper)
        spec = wide if helper else cluster
        label = f"blinded {mode}, integrity {'on' if integrity else 'off'}"
        rows.append(_row(model, label, plan(spec, "optimal", blind), base, blind))
    pool = BlindCosts.from_profile(measured, "pool", True)
    for factor in FIELD_FACTORS:
        row = _row(
            model,
            f"pool, integrity on, field factor {factor:g}",
            plan(_with_field_factor(cluster, factor), "optimal", pool),
            base,
            pool,
        )
        rows.append(row | {"field_factor": factor, "sweep": True})
    return rows, (opened, profile, workload, measured)


def two_desktops(cluster: Cluster) -> Cluster:
    """``cluster`` (seed 000's) with its enclaves at ``MEASURE_CLUSTER``'s speed, which the runtime can emulate."""
    speed = MEASURE_CLUSTER["devices"][0]["speed"]  # type: ignore[index]
    devices = [d.model_copy(update={"speed": speed}) if d.trusted else d for d in cluster.devices]
    return cluster.model_copy(update={"devices": devices, "name": f"{cluster.name} enclaves at {speed}"})


def measure(
    model: str, prepared: Any, frames: int, progress: Callable[[str], None], cluster: Cluster | None = None
) -> list[dict[str, Any]]:
    """The one-enclave plan (clock compressed to the enclave) and the blinded plan (pool, integrity on)
    run by the runtime on ``cluster`` (``MEASURE_CLUSTER``), measured beside predicted."""
    from serdab.runtime.emulation import compressed_dilation
    from serdab.runtime.frames import open_source
    from serdab.runtime.manager import ApplicationManager, RunOptions

    opened, profile, workload, measured = prepared
    cluster = cluster or Cluster.model_validate(MEASURE_CLUSTER)
    pool = BlindCosts.from_profile(measured, "pool", True)
    rows: list[dict[str, Any]] = []
    for label, blind, strategy in (
        ("one enclave", None, "single-tee"),
        ("blinded pool, integrity on", pool, "optimal"),
    ):
        request = plan_request(workload, cluster, chunk=CHUNK, blind=blind)
        placement = get_planner(strategy).plan(request)
        if placement is None or (blind is not None and not placement.helpers):
            rows.append({"model": model, "plan": label, "cluster": cluster.name, "measured": False})
            continue
        progress(f"{model}: running {placement.describe()} on {cluster.name}")
        dilation = compressed_dilation(cluster.devices) if blind is None else None  # the helper must keep up
        options = RunOptions(
            chunk=frames, placement=placement.describe(), repartition=None, dilation=dilation, blind=blind
        )
        manager = ApplicationManager(opened.chain, opened.name, profile, cluster, options)
        summary = manager.run(open_source(f"synthetic:{frames}", opened.chain.input_shape).frames())
        chunk = summary.chunks[-1]
        rows.append(
            {
                "model": model,
                "plan": label,
                "cluster": cluster.name,
                "measured": True,
                "placement": placement.describe(),
                "dilation": summary.dilation,
                "frames": frames,
                "measured_period_s": chunk.measured_period_s,
                "predicted_period_s": chunk.predicted_period_s,
                "measured_latency_s": chunk.measured_latency_s,
                "predicted_latency_s": chunk.predicted_latency_s,
                "wall_s": summary.wall_s,
            }
        )
    if len(rows) == 2 and all(r["measured"] for r in rows):
        rows[1]["speedup_measured"] = rows[0]["measured_period_s"] / rows[1]["measured_period_s"]
        rows[1]["speedup_predicted"] = rows[0]["predicted_period_s"] / rows[1]["predicted_period_s"]
    return rows


def agreement(models: list[str], frames: int, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """What quantising costs: top-1 of the quantised model (which the blinded pass reproduces bit for bit)
    against the float model. The trained LeNet-5 on the bundled digits' test split, against their labels
    too; the ImageNet-size models, whose weights are seeded (no trained weights ship), on ``frames``
    synthetic camera frames: agreement, top-5 overlap and the logits' correlation only, since an
    accuracy needs labels and trained weights (and seeded logits are nearly tied, so top-1 is fragile)."""
    from serdab.blind.quantize import quantize_model
    from serdab.models.digits import digits_28
    from serdab.onnxrt import make_session
    from serdab.runtime.frames import open_source

    rows = []
    for model in models:
        progress(f"{model}: quantised vs float top-1")
        opened = open_chain(model)
        chain = opened.chain
        quantised = quantize_model(chain.model, model)
        session = make_session(chain.model)
        labels = None
        if model == "lenet5_digits":
            _, _, images, labels_t = digits_28()
            batch = images.numpy()
            labels = labels_t.numpy()
            source = f"{len(batch)} bundled digits (test split)"
        else:
            batch = np.concatenate(
                [f.tensor for f in open_source(f"synthetic:{frames}", chain.input_shape).frames()], axis=0
            )
            source = f"{len(batch)} synthetic camera frames"
        floats = np.concatenate([session.run(None, {chain.input_name: x[None]})[0] for x in batch])
        ints = np.concatenate([quantised.dequantised(x[None]) for x in batch])
        top_f, top_q = floats.argmax(1), ints.argmax(1)
        spread = float(np.ptp(floats, axis=1).mean())
        five_f, five_q = np.argsort(-floats, axis=1)[:, :5], np.argsort(-ints, axis=1)[:, :5]
        overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(five_f, five_q, strict=True)])
        row = {
            "model": model,
            "images": source,
            "top1_agreement": float((top_f == top_q).mean()),
            "top5_overlap": float(overlap),
            "logit_correlation": float(np.corrcoef(floats.ravel(), ints.ravel())[0, 1]),
            "max_logit_error": float(np.abs(floats - ints).max()),
            "mean_logit_spread": spread,
        }
        if labels is not None:
            row |= {
                "float_accuracy": float((top_f == labels).mean()),
                "quantised_accuracy": float((top_q == labels).mean()),
            }
        rows.append(row)
    return rows


def run(
    progress: Callable[[str], None],
    *,
    quick: bool = False,
    cluster: str = "seed000",
    frames: int = 4,
    models: list[str] | None = None,
    images: int = 32,
    testbed: list[str] | None = None,
) -> dict[str, Any]:
    """Predicted plans on ``cluster`` for every mode; measured runs (unless ``quick``) on one desktop; the
    quantised models' agreement with the float ones."""
    spec = load_cluster(cluster)
    chosen = models or (["resnet18"] if quick else MODELS)
    predicted, measured = [], []
    for model in chosen:
        rows, prepared = predict(spec, model, progress)
        predicted += rows
        if not quick:
            measured += measure(model, prepared, frames, progress)
            if model == "vgg16":
                measured += measure(model, prepared, frames, progress, two_desktops(spec))
            if model in (testbed or ["resnet18"]):  # on the cluster itself (seed000: enclaves at 0.0073)
                measured += measure(model, prepared, frames, progress, spec)
    agreed = agreement(["lenet5_digits", "resnet18"] if quick else AGREEMENT_MODELS, 8 if quick else images, progress)
    return {
        "agreement": agreed,
        "cluster": spec.name,
        "chunk": CHUNK,
        "models": chosen,
        "predicted": predicted,
        "measured": measured,
        "measure_cluster": MEASURE_CLUSTER,
        "field_factor": "GPU time of a layer in the prime field / its plain time: assumed (no GPU here), swept",
        "emulated": "enclave and GPU speeds from the cluster files; blinding costs measured on this host",
    }


def plot(result: dict[str, Any], path: Path) -> None:
    rows = [r for r in result["predicted"] if not r.get("sweep")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    labels = list(dict.fromkeys(r["plan"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [next((r["speedup"] for r in rows if r["model"] == m and r["plan"] == label), 0) for m in models]
        axes[0].bar(np.arange(len(models)) + i * width, values, width, label=label)
    axes[0].set_xticks(np.arange(len(models)) + 0.4 - width / 2, models)
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"speedup over one enclave, T({result['chunk']}) (predicted)")
    axes[0].set_title(f"blinded offload on {result['cluster']} (emulated speeds)")
    axes[0].legend(fontsize=7)
    sweep = [r for r in result["predicted"] if r.get("sweep")]
    for m in models:
        points = [(r["field_factor"], r["speedup"]) for r in sweep if r["model"] == m]
        axes[1].plot(*zip(*points, strict=True), marker="o", label=m)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("field factor (GPU time in the field / plain time; assumed)")
    axes[1].set_ylabel("speedup (pool, integrity on)")
    axes[1].set_title("what the GPU's field arithmetic would have to cost")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict[str, Any]) -> list[Any]:
    table = new_table(
        f"blinded offload on {result['cluster']}, T({result['chunk']}) predicted (emulated speeds)",
        ("model", "plan", "placement", "speedup", "L s", "P s", "busy", "pool MiB/frame"),
        left=("model", "plan", "placement", "busy"),
    )
    for r in result["predicted"]:
        busy = " ".join(f"{d} {100 * v:.0f}%" for d, v in r["busy"].items())
        table.add_row(
            r["model"],
            r["plan"],
            r["placement"],
            f"{r['speedup']:.2f}x",
            f"{r['L_s']:.2f}",
            f"{r['P_s']:.2f}",
            busy,
            f"{r['pool_bytes_per_frame'] / 2**20:.1f}" if r["pool_bytes_per_frame"] else "-",
        )
    out: list[Any] = [table]
    if result["measured"]:
        measured = new_table(
            "measured by the runtime (desktop: tee 0.25 + gpu 8 on one host; seed000; seed000 with enclaves at 0.25)",
            (
                "model",
                "cluster",
                "plan",
                "placement",
                "P meas s",
                "P pred s",
                "L meas s",
                "L pred s",
                "speedup meas",
                "pred",
            ),
            left=("model", "plan", "placement"),
        )
        for r in result["measured"]:
            if not r.get("measured"):
                measured.add_row(r["model"], r["cluster"], r["plan"], "blinding not chosen", *[""] * 6)
                continue
            measured.add_row(
                r["model"],
                r["cluster"],
                r["plan"],
                r["placement"],
                f"{r['measured_period_s']:.3f}",
                f"{r['predicted_period_s']:.3f}",
                f"{r['measured_latency_s']:.3f}",
                f"{r['predicted_latency_s']:.3f}",
                f"{r['speedup_measured']:.2f}x" if "speedup_measured" in r else "",
                f"{r['speedup_predicted']:.2f}x" if "speedup_predicted" in r else "",
            )
        out.append(measured)
    agreed = new_table(
        "quantised vs float model (the blinded pass equals the quantised one bit for bit)",
        (
            "model",
            "images",
            "top-1 agreement",
            "top-5 overlap",
            "logit corr.",
            "max |logit error|",
            "mean logit spread",
            "accuracy float -> quantised",
        ),
        left=("model", "images"),
    )
    for r in result.get("agreement", []):
        accuracy = (
            f"{100 * r['float_accuracy']:.1f}% -> {100 * r['quantised_accuracy']:.1f}%"
            if "float_accuracy" in r
            else "-"
        )
        agreed.add_row(
            r["model"],
            r["images"],
            f"{100 * r['top1_agreement']:.1f}%",
            f"{100 * r.get('top5_overlap', 0):.0f}%",
            f"{r.get('logit_correlation', 0):.4f}",
            f"{r['max_logit_error']:.4f}",
            f"{r['mean_logit_spread']:.4f}",
            accuracy,
        )
    out.append(agreed)
    return out
