"""Reconstruction attacks on known answers, the audit CLI's errors, and the attack-ssim policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from serdab.cli.app import main
from serdab.errors import AuditError, PolicyError
from serdab.privacy.attacks import Baseline, CutTarget, DecoderAttack, WhiteBox, parse_attacks
from serdab.privacy.audit import AttackScore, AuditReport, CutAudit
from serdab.privacy.images import attacker_images, normaliser, pixel_batch, victim_images
from serdab.privacy.metrics import ssim_batch
from serdab.privacy.policy import allowed_starts, parse_policy


def _digits(n: int = 3) -> torch.Tensor:
    return pixel_batch(victim_images(grey=True)[:n], (1, 1, 28, 28))


def _ssim(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [float(ssim_batch(a[i, 0], b[i, 0][None])[0]) for i in range(a.shape[0])]


def test_whitebox_identity_prefix_rebuilds_the_input() -> None:
    images = _digits()
    norm = normaliser(1)
    target = CutTarget(norm(images), (1, 28, 28), norm, prefix=nn.Identity())
    rebuilt = WhiteBox(steps=150, tv=0.0).reconstruct(target)
    assert float((rebuilt - images).abs().max()) < 0.02
    assert min(_ssim(images, rebuilt)) > 0.98


def test_whitebox_on_a_zeroing_prefix_learns_nothing() -> None:
    images = _digits()
    norm = normaliser(1)
    zero = nn.Conv2d(1, 4, 3, padding=1)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    target = CutTarget(zero(norm(images)).detach(), (1, 28, 28), norm, prefix=zero)
    rebuilt = WhiteBox(steps=50).reconstruct(target)
    assert max(abs(s) for s in _ssim(images, rebuilt)) < 0.05


def test_decoder_trains_on_images_disjoint_from_the_victims() -> None:
    victims, attackers = victim_images(grey=True), attacker_images(grey=True, count=128)
    assert not {v.name for v in victims} & {a.name for a in attackers}
    assert not any(np.array_equal(v.pixels, a.pixels) for v in victims for a in attackers)
    images, train = pixel_batch(victims, (1, 1, 28, 28)), pixel_batch(attackers, (1, 1, 28, 28))
    pool = nn.AvgPool2d(2)  # a 14x14 cut that keeps the picture: a trained decoder must recover it
    target = CutTarget(pool(images), (1, 28, 28), normaliser(1), train_images=train, train_observed=pool(train))
    rebuilt = DecoderAttack(steps=300).reconstruct(target)
    assert np.mean(_ssim(images, rebuilt)) > 0.6


def test_baseline_picks_the_best_map() -> None:
    images = _digits()
    observed = torch.cat([torch.rand(3, 1, 28, 28), 1.0 - images], dim=1)  # noise, then the inverted image
    rebuilt = Baseline().reconstruct(CutTarget(observed, (1, 28, 28), normaliser(1), originals=images))
    assert min(_ssim(images, rebuilt)) > 0.95


def test_unknown_attack_is_refused() -> None:
    with pytest.raises(AuditError, match="unknown attack"):
        parse_attacks("whitebox,magic")


def _report(ssims: dict[int, float], blocks: int = 5) -> AuditReport:
    def cut(index: int, ssim: float) -> CutAudit:
        score = AttackScore(
            attack="whitebox",
            ssim_mean=ssim,
            ssim_worst=ssim,
            psnr_mean=10,
            psnr_worst=10,
            chance_ssim=0.1,
            per_image={},
            seconds=1.0,
        )
        return CutAudit(index=index, name="x", out_shape=[1, 4, 8, 8], resolution=[8, 8], scores={"whitebox": score})

    return AuditReport(
        model="m",
        model_digest="d",
        blocks=blocks,
        input_shape=[1, 1, 28, 28],
        images=["a"],
        train_images=[],
        attacks=["whitebox"],
        steps={"whitebox": 1},
        cuts=[cut(i, s) for i, s in ssims.items()],
    )


def test_attack_ssim_policy_allows_below_refuses_above_and_unaudited() -> None:
    resolutions = [(8, 8)] * 6  # cuts 0..5 of a 5-block model
    audit = _report({0: 0.9, 1: 0.2, 3: 0.29})  # block 2 not audited
    allowed = allowed_starts(parse_policy("attack-ssim:0.3"), resolutions, audit=audit)
    # policy cut c = tensor leaving block c-1; cut 0 (the frame) never
    assert allowed == [False, False, True, False, True, False]
    with pytest.raises(PolicyError, match="needs an audit"):
        allowed_starts(parse_policy("attack-ssim:0.3"), resolutions)
    with pytest.raises(PolicyError, match="audit the same model"):
        allowed_starts(parse_policy("attack-ssim:0.3"), resolutions, audit=_report({0: 0.1}, blocks=7))


def test_plan_under_attack_ssim_never_sends_an_unaudited_cut(tmp_path) -> None:
    from serdab.cluster import load_cluster
    from serdab.graph import open_chain
    from serdab.plan.model import plan_model
    from serdab.privacy.audit import model_digest
    from serdab.profile import cached_profile

    chain = open_chain("lenet5").chain
    profile, _ = cached_profile(chain, "lenet5")
    audit = _report({9: 0.1}, blocks=len(chain.blocks)).model_copy(update={"model_digest": model_digest(chain)})
    planned = plan_model(profile, load_cluster("paper"), policy="attack-ssim:0.3", audit=audit, chunk=100)
    trusted = {d.name: d.trusted for d in load_cluster("paper").devices}
    untrusted_firsts = [s.first for s in planned.placement.stages if not all(trusted[d] for d in s.devices)]
    assert all(first == 10 for first in untrusted_firsts)  # only the audited cut (after block 9)


def test_audit_cli_bad_inputs_one_line_exit_2(tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["audit", "lenet5", "--cuts", "99"], "no cut 99"),
        (["audit", "lenet5", "--images", str(empty)], "no image files"),
        (["audit", "lenet5", "--attack", "magic"], "unknown attack"),
    ]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_report({0: 0.1}).model_dump()))
    cases.append(
        (
            ["plan", "lenet5", "--cluster", "paper", "--privacy", "attack-ssim:0.3", "--audit", str(other)],
            "not for lenet5",
        )
    )
    for args, message in cases:
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, err
        assert err[-1].startswith("serdab: error: ") and message in err[-1], err
        assert "Traceback" not in "\n".join(err)


def test_audit_cli_runs_and_writes_json_and_png(tmp_path) -> None:
    out, png = tmp_path / "a.json", tmp_path / "a.png"
    code = main(
        [
            "audit",
            "lenet5",
            "--cuts",
            "2",
            "--attack",
            "whitebox,baseline",
            "--steps",
            "20",
            "--json",
            str(out),
            "--png",
            str(png),
        ]
    )
    assert code == 0
    report = AuditReport.model_validate_json(out.read_text())
    assert [c.index for c in report.cuts] == [2] and set(report.cuts[0].scores) == {"whitebox", "baseline"}
    assert png.stat().st_size > 1000
