"""`serdab bench ...`: a registry of benchmarks and one command factory.

Each benchmark is a module under ``serdab.bench`` with ``run``, ``plot`` and ``report`` (see that
package); here it gets a name, its options and the default place of its result. The command runs it
under a progress line, writes the JSON and the PNG, and prints the tables docs/benchmarks.md quotes.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from serdab.cli.common import console, err_console

__all__ = ["BENCHMARKS", "Benchmark", "BenchOption", "bench_app"]

RESULTS = Path("bench/results")


@dataclass(frozen=True)
class BenchOption:
    """One option of a benchmark: ``--name`` on the command line, ``name`` in its ``run``."""

    name: str
    kind: Any  # int, float, str, bool (a flag), list[str] (repeatable), or X | None
    default: Any
    help: str
    min: float | None = None
    max: float | None = None

    def parameter(self) -> inspect.Parameter:
        flag = "--" + self.name.replace("_", "-")
        option = typer.Option(flag, help=self.help, show_default=self.default is not None, min=self.min, max=self.max)
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default, annotation=Annotated[self.kind, option]
        )


@dataclass(frozen=True)
class Benchmark:
    name: str
    summary: str  # what --help says (the module is imported only when the benchmark runs)
    module: str  # exports run(progress, **options), plot(result, path), report(result)
    options: tuple[BenchOption, ...] = ()
    extra: str | None = None  # the optional extra its module needs (pip install 'serdab[EXTRA]')
    reads_result_file: bool = False  # run() also gets result_file=the --json path (to keep earlier parts)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "profile",
            "Profiling cost of each zoo model and the sum-of-blocks vs whole-model error.",
            "serdab.bench.profile_bench",
            (
                BenchOption("repeat", int, 30, "Timed runs per block.", min=1),
                BenchOption("threads", int, 1, "ONNX Runtime intra-op threads.", min=1),
                BenchOption("quick", bool, False, "Small models only (seconds, not minutes)."),
            ),
        ),
        Benchmark(
            "placement",
            "Seed 000 Fig. 12: every strategy's speedup over one enclave, and the optimal planner's speed.",
            "serdab.bench.placement_bench",
            (
                BenchOption("cluster", list[str] | None, None, "Cluster file(s) or shipped names (repeatable)."),
                BenchOption("speed_cluster", str, "edge-cloud", "Six-device cluster for the planner-speed target."),
                BenchOption("chunk", int, 10_800, "Frames in the stream (seed 000: 10,800).", min=1),
                BenchOption("policy", str, "resolution:20", "Privacy policy (seed 000: resolution:20)."),
                BenchOption("quick", bool, False, "ResNet18 only."),
            ),
        ),
        Benchmark(
            "rlpdnn",
            "Seed 003 (RL-PDNN): DQN (paper and masked), static, greedy and search placement vs the exact optimum.",
            "serdab.bench.rlpdnn_bench",
            (BenchOption("quick", bool, False, "Fewer workloads, steps and requests (about 3 minutes)."),),
        ),
        Benchmark(
            "he",
            "Seed 004 (HE-DL): packed CKKS recall, transfer and batch modes vs one BFV ciphertext per pixel.",
            "serdab.bench.he_bench",
            (BenchOption("quick", bool, False, "40 + 10 images, one baseline image (about 3 minutes)."),),
        ),
        Benchmark(
            "pipeline",
            "Seed 000 Fig. 12 measured: each strategy's placement run by the pipeline runtime, beside its prediction.",
            "serdab.bench.pipeline_bench",
            (
                BenchOption("quick", bool, False, "ResNet-18 only, 12 frames (about 3 minutes)."),
                BenchOption("frames", int | None, None, "Frames per run (default 24; 12 with --quick).", min=2),
                BenchOption("cluster", str, "paper", "Cluster file or shipped example."),
                BenchOption(
                    "compress",
                    bool,
                    False,
                    "Compress the emulated clock to the enclaves' speed (seed000: hours become minutes); faster "
                    "devices then count what they really took.",
                ),
                BenchOption("models", list[str] | None, None, "Models to run (repeatable; default seed 000's five)."),
            ),
        ),
        Benchmark(
            "blinded",
            "Issue 28: blinded offload of linear layers (each precomputation mode, with and without Freivalds) "
            "against one enclave and Serdab's plaintext plans; measured runs on one desktop and on seed 000's testbed "
            "(about 15 minutes).",
            "serdab.bench.blinded_bench",
            (
                BenchOption("quick", bool, False, "ResNet-18 only, predictions only (about a minute)."),
                BenchOption("cluster", str, "seed000", "Cluster file or shipped example for the predictions."),
                BenchOption("frames", int, 4, "Frames per measured run.", min=2),
                BenchOption(
                    "models", list[str] | None, None, "Models (repeatable; default VGG-16, ResNet-18, MobileNetV2)."
                ),
                BenchOption(
                    "testbed",
                    list[str] | None,
                    None,
                    "Models also measured on --cluster itself, at its own speeds (repeatable; default ResNet-18: "
                    "about 5 minutes; VGG-16 about 15).",
                ),
            ),
        ),
        Benchmark(
            "startup",
            "CLI start-up time and the heavy packages each entry point imports.",
            "serdab.bench.startup_bench",
            (BenchOption("repeat", int, 7, "Runs per command (median).", min=1),),
        ),
        Benchmark(
            "audit",
            "Privacy audit of the zoo: white-box SSIM per resolution, trained vs seeded LeNet-5, and the speedup "
            "an attack-ssim policy costs against resolution:20.",
            "serdab.bench.audit_bench",
            (
                BenchOption("quick", bool, False, "LeNet-5 twins and ResNet-18 only (about 5 minutes on 2 cores)."),
                BenchOption("threshold", float, 0.3, "SSIM threshold of the attack policy.", min=0.0, max=1.0),
                BenchOption("cluster", str, "paper", "Cluster file or shipped example the plans are scored on."),
            ),
        ),
        Benchmark(
            "serving",
            "Seeds 001 and 002 measured: start time, channel, latency vs concurrency, mixed privacy, memory, "
            "TLS cost, P99 under EPC interference per balancing policy, replica scaling, gateway overhead "
            "(20 minutes; --quick 8).",
            "serdab.bench.serving_bench",
            (
                BenchOption("quick", bool, False, "Fewer points and shorter runs (about 8 minutes)."),
                BenchOption(
                    "parts",
                    str | None,
                    None,
                    "Run only these parts (overhead,tensors,seed001,fig6,table1,fig7), keeping the others from --json.",
                ),
            ),
            reads_result_file=True,
        ),
        Benchmark(
            "scale",
            "The pipeline on the local executor vs Ray on 1, 2, 3 nodes of this machine, and Ray Serve vs the "
            "gateway. Needs the ray extra.",
            "serdab.bench.scale_bench",
            (
                BenchOption("frames", int, 48, "Frames per pipeline run.", min=4),
                BenchOption("pipeline_only", bool, False, "Skip the serving part."),
            ),
            extra="ray",
        ),
    )
}


def _load(bench: Benchmark) -> Any:
    try:
        return importlib.import_module(bench.module)
    except ImportError as exc:
        if bench.extra is None:
            raise
        from serdab.errors import ConfigError

        raise ConfigError(
            f"serdab bench {bench.name} needs the {bench.extra} extra: pip install 'serdab[{bench.extra}]' ({exc})"
        ) from None


def command(bench: Benchmark) -> Callable[..., None]:
    """The typer command of ``bench``: its options, then run, write JSON + PNG, print the report."""

    def run_benchmark(**options: Any) -> None:
        from serdab.bench import write_result

        json_path: Path = options.pop("json_path")
        module = _load(bench)
        if bench.reads_result_file:
            options["result_file"] = json_path
        started = time.perf_counter()
        with err_console.status(f"{bench.name} benchmark") as status:
            result = module.run(status.update, **options)
        png = write_result(result, json_path, module.plot)
        for item in module.report(result):
            console.print(item)
        err_console.print(f"wrote {json_path} and {png} in {time.perf_counter() - started:.0f} s")

    json_option = typer.Option("--json", help="Where to write the JSON result (the PNG goes beside it).")
    parameters = [
        inspect.Parameter(
            "json_path",
            inspect.Parameter.KEYWORD_ONLY,
            default=RESULTS / f"{bench.name}.json",
            annotation=Annotated[Path, json_option],
        ),
        *(option.parameter() for option in bench.options),
    ]
    run_benchmark.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run_benchmark.__doc__ = bench.summary
    run_benchmark.__name__ = f"bench_{bench.name}"
    return run_benchmark


bench_app = typer.Typer(
    help="Benchmarks: each writes JSON and a PNG under bench/results/.", no_args_is_help=True, add_completion=False
)
for _bench in BENCHMARKS.values():
    bench_app.command(_bench.name)(command(_bench))
