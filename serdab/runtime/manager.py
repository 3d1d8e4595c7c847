"""The application manager (seed 000 Fig. 2): plan, check, deploy, stream in chunks, re-plan, recover.

It asks a registered planner for a placement (or takes one given by hand) and checks it against
the privacy policy itself before anything is deployed. Frames go in chunks of n; within a chunk
they stream through the stages as a pipeline; at each chunk boundary the measured stage times
are compared with the prediction (``Repartitioner``) and the placement may change. A worker
that dies mid-chunk takes its deployment down: the manager redeploys (or re-plans without the
device once it has failed ``max_restarts`` times) and re-sends the chunk's frames that have no
result yet; results are kept once per frame id, so every frame yields exactly one result.
"""

from __future__ import annotations

import queue
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from serdab.cluster import Cluster
from serdab.errors import FaultBudgetError, InfeasibleError, PlanError, PolicyError, RunError
from serdab.framing import RECORD_SLOTS
from serdab.graph import Chain
from serdab.kms.lifecycle import KmsCoordinates
from serdab.kms.owner import OwnerSession
from serdab.plan import BlindCosts, CostModel, Placement, PlanRequest, Workload, get_planner, violation
from serdab.plan.model import plan_request
from serdab.plan.placement import PlanCost, Stage
from serdab.plan.report import why_infeasible
from serdab.plan.simulate import simulate
from serdab.privacy.policy import parse_policy
from serdab.profile import Profile
from serdab.runtime.deployment import Deployment, DeploymentContext, FrameResult, WorkerLost
from serdab.runtime.emulation import Emulation, choose_dilation, native_cluster
from serdab.runtime.engine import SWITCH_INTERVAL_S
from serdab.runtime.executor import Executor, LocalExecutor
from serdab.runtime.faults import FaultBudget
from serdab.runtime.frames import Frame, chunks, normalisation
from serdab.runtime.protocol import SOURCE
from serdab.runtime.repartition import Repartitioner, StageObservation
from serdab.runtime.report import ChunkReport, HopReport, RunSummary, StageReport, top_k
from serdab.runtime.resources import ResourceManager
from serdab.runtime.stages import StageArtifact, package_stages
from serdab.tee.host import serdab_home

__all__ = ["ApplicationManager", "RunOptions", "frame_ranges", "parse_placement"]

_STAGE = re.compile(
    r"^\s*([A-Za-z0-9_.+-]+?)\s*(?:\(\s*blinded\s*:\s*([A-Za-z0-9_.-]+)\s*\))?\s*\[\s*(\d+)\s*-\s*(\d+)\s*\]\s*$"
)


def parse_placement(text: str) -> Placement:
    """``tee1[0-11] -> gpu2[12-21]`` (replicas joined with +; ``tee1(blinded:gpu0)[0-5]`` a stage whose
    linear layers gpu0 computes blinded), as ``Placement.describe`` prints it."""
    stages = []
    for part in text.split("->"):
        match = _STAGE.match(part)
        if not match:
            raise PlanError(
                f"cannot read placement stage {part.strip()!r}; write e.g. 'tee1[0-11] -> gpu2[12-21]' "
                "or 'tee1(blinded:gpu0)[0-11]'"
            )
        devices, helper, first, last = match.groups()
        stages.append(Stage(tuple(devices.split("+")), int(first), int(last), helper))
    return Placement("manual", tuple(stages))


@dataclass(frozen=True)
class RunOptions:
    chunk: int = 10
    strategy: str = "optimal"
    privacy: str = "resolution:20"
    trusted_tail: bool = False
    replicate: bool = False
    native: bool = False
    dilation: float | None = None
    placement: str | None = None
    slowdowns: dict[str, tuple[float, int]] = field(default_factory=dict)
    repartition: Repartitioner | None = field(default_factory=Repartitioner)
    fault_budget: int = 3  # faults per device within fault_window_s that are restarted; then the device is lost
    fault_window_s: float = 120.0
    fault_backoff_s: float = 0.25
    kms_url: str | None = None
    kms_token: Path | None = None
    keep_outputs: bool = False
    keep_run_dir: bool = False  # leave stage images, logs and the key-service store for a post-mortem
    chunk_timeout_s: float = 600.0
    lost_after_s: float = 5.0
    blind: BlindCosts | None = None  # trusted stages may have an untrusted helper blind their linear layers
    tamper: dict[str, int] = field(default_factory=dict)  # fault injection: a helper answers wrongly from a frame


Progress = Callable[[dict[str, Any]], None]
Route = Callable[[str, str, tuple[str, int]], tuple[str, int]]


@dataclass
class _Run:
    """One run's state, from its first deployment to its summary."""

    ctx: DeploymentContext
    kms: OwnerSession | None
    dir: Path
    id: str
    budget: FaultBudget
    emitter: _Emitter
    streak: dict[tuple[str, ...], int] = field(default_factory=dict)  # the re-plan rule's memory


class _Emitter:
    """Result lines in frame order, each handed on as soon as it and every frame sent before it are done;
    ``flush`` hands on the rest (out of order) when a run ends early, so nothing answered is lost."""

    def __init__(self, on_result: Callable[[dict], None] | None) -> None:
        self._out = on_result
        self._expected: deque[int] = deque()
        self._pending: dict[int, dict[str, Any]] = {}
        self.frames: list[int] = []  # ids handed on, in order

    def expect(self, frames: list[Frame]) -> None:
        self._expected.extend(f.id for f in frames)

    def done(self, line: dict[str, Any]) -> None:
        self._pending[line["frame"]] = line
        while self._expected and self._expected[0] in self._pending:
            self._hand_on(self._pending.pop(self._expected.popleft()))

    def flush(self) -> None:
        for frame in sorted(self._pending):
            self._hand_on(self._pending.pop(frame))

    @property
    def answered(self) -> int:
        return len(self.frames)

    def _hand_on(self, line: dict[str, Any]) -> None:
        self.frames.append(int(line["frame"]))
        if self._out:
            self._out(line)


def frame_ranges(frames: list[int]) -> str:
    """'0-41, 45, 50-60': frame ids in short form, for a one-line report."""
    parts: list[str] = []
    ids = sorted(set(frames))
    start = prev = None
    for i in [*ids, None]:
        if start is not None and (i is None or i != (prev or 0) + 1):
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ", ".join(parts)


def _no_key_service(service: str) -> KmsCoordinates:
    raise RunError(f"stage service {service} needs the key service, and none is running")


class ApplicationManager:
    def __init__(
        self,
        chain: Chain,
        model: str,
        profile: Profile,
        cluster: Cluster,
        options: RunOptions,
        executor: Executor | None = None,
        leakage: Any = None,
        audit: Any = None,
        route: Route | None = None,
    ) -> None:
        """``executor`` starts the workers (the local one by default); ``route`` (sender worker, receiver
        worker, address) -> address to dial, lets a test put a proxy on a link."""
        self.chain = chain
        self.model = model
        self.profile = profile
        self.options = options
        self.executor = executor or LocalExecutor()
        self.route = route
        self.resources = ResourceManager(cluster, lost_after_s=options.lost_after_s)
        self.cluster = cluster
        self.workload = Workload.from_profile(profile)
        if options.blind is not None:
            self.workload = replace(self.workload, blind=options.blind)
        self.policy = parse_policy(options.privacy)
        if self.policy.needs_leakage and leakage is None:
            raise PolicyError(f"policy {options.privacy} needs a leakage report")
        if self.policy.needs_audit and audit is None:
            raise PolicyError(f"policy {options.privacy} needs an audit report (--audit)")
        self.leakage = leakage
        self.audit = audit
        self.speeds: dict[str, float] = {}  # measured speeds that replace the cluster file's for planning
        self.summary = RunSummary(model=model, cluster=cluster.name, policy=self.policy.spec, chunk=options.chunk)
        self._artifacts: dict[str, list[StageArtifact]] = {}
        self._epoch = 0
        self.deployment: Deployment | None = None
        self.key_service: OwnerSession | None = None

    # --- planning -------------------------------------------------------------------------------
    def _request(self, cluster: Cluster) -> PlanRequest:
        o = self.options
        return plan_request(
            self.workload,
            cluster,
            policy=self.policy,
            chunk=o.chunk,
            trusted_tail=o.trusted_tail,
            replicate=o.replicate,
            leakage=self.leakage,
            audit=self.audit,
        )

    def belief(self) -> Cluster:
        cluster = self.resources.cluster(self.speeds)
        return native_cluster(cluster) if self.options.native else cluster

    def plan(self) -> Placement:
        """The strategy's placement on the devices still available (or the hand-made one), checked."""
        request = self._request(self.belief())
        if self.options.placement and not self.summary.placements:
            placement = parse_placement(self.options.placement)
        else:
            # a hand-made placement that lost a device falls back to the optimal planner
            strategy = "optimal" if self.options.placement else self.options.strategy
            planned = get_planner(strategy).plan(request)
            if planned is None:
                raise InfeasibleError(why_infeasible(request, strategy))
            placement = planned
        self.check(placement, request)
        return placement

    def check(self, placement: Placement, request: PlanRequest | None = None) -> None:
        """Refuse a placement that breaks the policy, memory or links: repeated here, whoever planned it."""
        request = request or self._request(self.belief())
        error = violation(request, placement)
        if not error and len(placement.stages) > RECORD_SLOTS:
            error = f"{len(placement.stages)} stages; a frame records at most {RECORD_SLOTS}"
        if error:
            raise PlanError(f"refusing to deploy {placement.describe()}: {error}")

    # --- running --------------------------------------------------------------------------------
    def run(
        self,
        frames: Iterator[Frame],
        total: int | None = None,
        on_result: Callable[[dict], None] | None = None,
        progress: Progress | None = None,
    ) -> RunSummary:
        """Stream ``frames``. Each result line goes
        to ``on_result`` as soon as its frame and every frame before it are done; whatever stops the
        run (a spent fault budget, Ctrl-C, SIGTERM), the lines of every frame answered are handed on
        first and every process and file of the run is gone when this returns or raises."""
        o = self.options
        run_dir = Path(tempfile.mkdtemp(prefix="serdab-run-"))
        kms: OwnerSession | None = None
        started = time.monotonic()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)  # feeder, sink and control threads (see engine.run)
        emitter = _Emitter(on_result)
        try:
            placement = self.plan()
            names = self.cluster.names if not o.placement else placement.devices + placement.helpers
            if o.blind is not None and o.blind.helper and o.placement:
                names.append(o.blind.helper)
            used = [self.cluster.device(d) for d in names]
            dilation = 1.0 if o.native else (o.dilation or choose_dilation(used))
            self.emulation = Emulation(o.native, dilation)
            self.summary.emulation = self.emulation.describe()
            self.summary.dilation = dilation
            if any(self.cluster.device(d).trusted for d in self.cluster.names):
                kms = self.key_service = self._kms(run_dir)
            ctx = DeploymentContext(
                executor=self.executor,
                resources=self.resources,
                cluster=self.cluster,
                kms_coordinates=kms.coordinates if kms else _no_key_service,
                run_dir=run_dir,
                native=o.native,
                dilation=dilation,
                slowdowns=dict(o.slowdowns),
                allow_simulated=True,
                normalise=normalisation(self.chain.input_shape[1]),
                route=self.route,
                blind_frames=total if total is not None else o.chunk,
                tamper=dict(o.tamper),
            )
            budget = FaultBudget(o.fault_budget, o.fault_window_s, o.fault_backoff_s)
            run = _Run(ctx, kms, run_dir, f"run-{secrets.token_hex(4)}", budget, emitter)
            self._deploy(run, placement)
            done = 0
            for index, frames_in in enumerate(chunks(frames, o.chunk)):
                emitter.expect(frames_in)
                for bad in (f for f in frames_in if f.error is not None):  # answered with why, sent nowhere
                    self.summary.skipped.append({"frame": bad.id, "source": bad.name, "error": bad.error})
                    emitter.done({"frame": bad.id, "model": self.model, "source": bad.name, "error": bad.error})
                chunk = [f for f in frames_in if f.error is None]
                if not chunk:
                    continue
                results, interrupted = self._run_chunk(run, chunk, index)
                report = self._report(index, chunk, results, interrupted)
                self.summary.chunks.append(report)
                done += len(chunk)
                if progress and self.deployment is not None:
                    progress({"done": done, "total": total, "chunk": report, "placement": self.deployment.placement})
                if o.repartition and not interrupted:
                    self._maybe_replan(run, report, index)
            self.summary.frames = done
            return self.summary
        finally:
            emitter.flush()
            self.summary.answered = emitter.answered
            self.summary.answered_frames = frame_ranges(emitter.frames)
            self.summary.wall_s = time.monotonic() - started
            sys.setswitchinterval(switch_interval)
            if self.deployment is not None:
                self._retire(self.deployment)
                self.deployment = None
            if kms is not None:
                kms.close()
            self.executor.close()
            if o.keep_run_dir:
                self.summary.run_dir = str(run_dir)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)

    def _kms(self, run_dir: Path) -> OwnerSession:
        roots = self.executor.simulated_roots()
        if self.options.kms_url:
            token = self.options.kms_token or serdab_home() / "kms" / "admin.token"
            return OwnerSession.external(self.options.kms_url, token, roots, {}, allow_simulated=True)
        return OwnerSession.embedded(run_dir / "kms", roots, serdab_home() / "images")

    def _deploy(self, run: _Run, placement: Placement) -> None:
        if run.kms is not None and run.kms.revive():  # it died since the last deployment: enclaves need it
            self.summary.faults.append(
                {
                    "device": "key service",
                    "reason": "the key service had exited",
                    "action": "restarted it from its store before re-deploying",
                    "frame": None,
                }
            )
        key = placement.describe()
        if key not in self._artifacts:
            trusted = {d.name: d.trusted for d in self.cluster.devices}
            artifacts = package_stages(
                self.chain, placement, trusted, run.dir / f"deploy{len(self._artifacts)}", run.id
            )
            for artifact in artifacts:
                if artifact.image is not None:
                    if run.kms is None:
                        raise RunError("a trusted stage needs the key service, and none is running")
                    run.kms.register(artifact.image)
            self._artifacts[key] = artifacts
        self._epoch += 1
        physical = CostModel(self.workload, native_cluster(self.cluster) if self.options.native else self.cluster)
        deployment = Deployment(run.ctx, placement, self._artifacts[key], self._epoch, physical)
        self.deployment = deployment
        try:
            deployment.start()
            deployment.warm(tuple(self.chain.input_shape))
        except BaseException:
            deployment.stop()
            self.deployment = None
            raise
        self.current_cost = self._request(self.belief()).evaluate(placement)
        self.summary.attested.update(deployment.attested)
        if not self.summary.placements or self.summary.placements[-1] != key:
            self.summary.placements.append(key)

    def _retire(self, deployment: Deployment) -> None:
        """Stop a deployment that streamed, and keep what its hops carried beside the cost model's bytes."""
        deployment.stop()
        traffic = deployment.traffic()
        placement = deployment.placement
        for hop in self.current_cost.hops:
            k = next(i for i, stage in enumerate(placement.stages) if stage.devices == hop.dst)
            senders = {w.id for w in deployment.topology.stages[k - 1]} if k else {SOURCE}
            receivers = {w.id for w in deployment.topology.stages[k]}
            carried = [v for (src, dst), v in traffic.items() if src in senders and dst in receivers]
            frames = sum(n for _, n in carried)
            if frames:
                self.summary.hops.append(
                    HopReport(
                        placement=placement.describe(),
                        src=list(hop.src),
                        dst=list(hop.dst),
                        cut=hop.boundary - 1 if hop.boundary else None,
                        frames=frames,
                        measured_bytes=sum(b for b, _ in carried) / frames,
                        predicted_bytes=hop.bytes,
                    )
                )

    def _run_chunk(self, run: _Run, chunk: list[Frame], index: int) -> tuple[dict[int, FrameResult], bool]:
        results: dict[int, FrameResult] = {}
        interrupted = False
        frames = {f.id: f for f in chunk}
        while len(results) < len(chunk):
            deployment = self.deployment
            assert deployment is not None
            stop = threading.Event()
            pending = [(f.id, f.pixels) for f in chunk if f.id not in results]  # uint8: the first stage normalises
            feeder = threading.Thread(target=deployment.feed, args=(pending, stop), daemon=True)
            feeder.start()
            allowed = self.options.chunk_timeout_s + 2 * deployment.expected_host_s(len(pending))
            deadline = time.monotonic() + allowed
            try:
                while len(results) < len(chunk):
                    try:
                        result = deployment.results.get(timeout=0.1)
                    except queue.Empty:
                        pass
                    else:
                        if result.frame not in results and result.frame in frames:
                            results[result.frame] = result
                            run.emitter.done(self._line(frames[result.frame], result, index))
                    deployment.check()
                    if time.monotonic() > deadline:
                        missing = sorted(set(frames) - set(results))
                        raise RunError(f"frames {missing[:5]} never came out of the pipeline within {allowed:.0f} s")
            except WorkerLost as lost:
                stop.set()
                interrupted = True
                self._retire(deployment)
                self.deployment = None
                first_missing = min((f.id for f in chunk if f.id not in results), default=None)
                self._recover(run, lost, deployment.placement, first_missing)
            finally:
                stop.set()
                feeder.join(timeout=5)
        return results, interrupted

    def _recover(self, run: _Run, lost: WorkerLost, placement: Placement, frame: int | None) -> None:
        """Charge the fault to the device whose process failed, then restart (after a backoff) or re-plan
        without it; a fault while re-deploying is handled the same way, until one deployment stands."""
        while True:
            device = lost.device
            count = run.budget.charge(device)
            if run.budget.spent(device):
                if device == self.cluster.source:
                    self.summary.faults.append(
                        {"device": device, "reason": str(lost), "action": "gave up: fault budget spent", "frame": frame}
                    )
                    raise FaultBudgetError(
                        f"{device} failed {count} times within {run.budget.window_s:.0f} s (fault budget "
                        f"{run.budget.faults}); it is the source where frames arrive, so the run stops: {lost}"
                    )
                self.resources.deregister(device, str(lost))
                action = f"re-planned without {device} (fault {count}, budget {run.budget.faults} spent)"
                placement = self.plan()
            else:
                wait = run.budget.backoff(device)
                action = f"restarted the workers after {wait:.2f} s (fault {count} of {run.budget.faults} for {device})"
                time.sleep(wait)
            self.summary.faults.append({"device": device, "reason": str(lost), "action": action, "frame": frame})
            try:
                self._deploy(run, placement)
                return
            except WorkerLost as again:
                lost = again

    def _report(
        self, index: int, chunk: list[Frame], results: dict[int, FrameResult], interrupted: bool
    ) -> ChunkReport:
        d = self.emulation.dilation
        ordered = [results[f.id] for f in chunk]
        first = ordered[0]
        done = sorted(r.done_s for r in ordered)
        n = len(ordered)
        cost: PlanCost = self.current_cost
        stages = []
        for k, stage in enumerate(cost.placement.stages):
            times = [rec["emulated_ms"] / 1000 for r in ordered for rec in r.records if rec["stage"] == k]
            span = (done[-1] - min(r.sent_s for r in ordered)) / d
            stages.append(
                StageReport(
                    stage=k,
                    devices=list(stage.devices),
                    blocks=f"{stage.first}-{stage.last}",
                    predicted_ms=1000 * cost.stages[k].compute_s,
                    measured_ms=1000 * float(np.median(times)) if times else 0.0,
                    utilisation=(sum(times) / (span * stage.replicas)) if span > 0 else 0.0,
                )
            )
        measured_t = (done[-1] - min(r.sent_s for r in ordered)) / d
        probed = self.deployment.latency_s if self.deployment is not None else None
        paths = self.deployment.path_latency_s if self.deployment is not None else []
        latency = probed if probed is not None else first.done_s - first.sent_s
        costs = self._request(self.belief()).costs
        predicted = costs.evaluate(cost.placement, n)
        simulated = simulate(costs, cost.placement, n).chunk_time_s
        return ChunkReport(
            index=index,
            frames=n,
            first_frame=chunk[0].id,
            placement=cost.placement.describe(),
            interrupted=interrupted,
            measured_chunk_s=measured_t,
            measured_latency_s=latency / d,
            first_frame_latency_s=(first.done_s - first.sent_s) / d,
            measured_period_s=((done[-1] - done[0]) / (n - 1) / d) if n > 1 else 0.0,
            measured_path_latencies_s=[t / d for t in paths],
            predicted_chunk_s=predicted.paths_time_s,
            predicted_latency_s=predicted.latency_s,
            predicted_period_s=predicted.mean_gap_s,
            predicted_path_latencies_s=list(predicted.path_latencies_s),
            paths=[
                " -> ".join(s.devices[j % s.replicas] for s in cost.placement.stages)
                for j in range(len(predicted.path_latencies_s))
            ],
            steady_period_s=predicted.period_s,
            predicted_bottleneck=predicted.bottleneck,
            simulated_chunk_s=simulated,
            stages=stages,
        )

    def _line(self, frame: Frame, result: FrameResult, chunk: int) -> dict[str, Any]:
        d = self.emulation.dilation
        line: dict[str, Any] = {
            "frame": frame.id,
            "model": self.model,
            "source": frame.name,
            "chunk": chunk,
            "top5": top_k(result.outputs[-1], 5),
            "latency_ms": 1000 * (result.done_s - result.sent_s) / d,
            "stages": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in result.records],
        }
        if self.options.keep_outputs:
            line["outputs"] = result.outputs
        return line

    def _maybe_replan(self, run: _Run, report: ChunkReport, index: int) -> None:
        rule = self.options.repartition
        assert rule is not None and self.deployment is not None
        belief = self.belief()
        observations = [
            StageObservation(
                devices=tuple(s.devices),
                speed=belief.device(s.devices[0]).speed,
                predicted_s=s.predicted_ms / 1000,
                measured_s=s.measured_ms / 1000,
            )
            for s in report.stages
        ]
        speeds, run.streak, reason = rule.decide(observations, run.streak)
        if speeds is None:
            return
        self.speeds.update(speeds)
        old = self.deployment.placement
        new = self.plan() if not self.options.placement else old
        self.summary.switches.append(
            {
                "after_chunk": index,
                "before_frame": report.first_frame + report.frames,
                "reason": reason,
                "from": old.describe(),
                "to": new.describe(),
                "speeds": {k: round(v, 4) for k, v in speeds.items()},
            }
        )
        if new.describe() != old.describe():
            self._retire(self.deployment)
            self.deployment = None
            self._deploy(run, new)
        else:
            self.current_cost = self._request(self.belief()).evaluate(old)
