"""Privacy policies: which cut tensors an untrusted device may receive (seed 000, sec. IV, C1/C2).

``trusted-only`` is C1 (every block in a trusted device). The C2 forms let an untrusted stage
receive a cut tensor (cut i: what block i outputs) that is private enough: ``resolution:20`` (spatial size <= 20x20, no
spatial axes counts as 1x1; seed 000 sec. VI-B's user study), or a similarity to the input
below a bound, ``pearson:D`` / ``ssim:D`` (worst case over images < D) or ``mse:D`` (MSE is a
distance, so > D). ``attack-ssim:X`` / ``attack-psnr:Y`` rest on real reconstruction attacks
(``serdab audit``): the worst-case SSIM (PSNR) of any audited attack at the cut must be below X
(Y); a cut the audit did not attack is not released. The input frame itself never is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from serdab.errors import PolicyError
from serdab.privacy.leakage import CutLeakage, LeakageReport
from serdab.privacy.metrics import within_resolution

if TYPE_CHECKING:
    from serdab.privacy.audit import AuditReport, CutAudit

__all__ = ["POLICIES", "CutView", "PrivacyPolicy", "allowed_starts", "parse_policy"]

EXAMPLES = "trusted-only, resolution:20, pearson:0.5, ssim:0.3, mse:0.05, attack-ssim:0.3 or attack-psnr:15"


@dataclass(frozen=True)
class CutView:
    """What a policy may look at for the tensor crossing one boundary (before block ``boundary``)."""

    boundary: int
    resolution: tuple[int, int] | None
    leakage: CutLeakage | None = None
    audit: CutAudit | None = None


class PrivacyPolicy(ABC):
    """Decides, per cut, whether the tensor there may go to an untrusted device."""

    name: ClassVar[str]
    needs_leakage: ClassVar[bool] = False
    needs_audit: ClassVar[bool] = False

    @abstractmethod
    def allows(self, cut: CutView) -> bool:
        """True when an untrusted device may receive this tensor."""

    @property
    def spec(self) -> str:
        return self.name


class TrustedOnly(PrivacyPolicy):
    name = "trusted-only"

    def allows(self, cut: CutView) -> bool:
        return False


class ResolutionPolicy(PrivacyPolicy):
    name = "resolution"

    def __init__(self, threshold: float = 20) -> None:
        if threshold != int(threshold) or threshold < 1:
            raise PolicyError(f"resolution threshold must be a whole number of pixels >= 1, got {threshold:g}")
        self.threshold = int(threshold)

    def allows(self, cut: CutView) -> bool:
        return within_resolution(cut.resolution, self.threshold)

    @property
    def spec(self) -> str:
        return f"resolution:{self.threshold}"


class SimilarityPolicy(PrivacyPolicy):
    """Worst-case similarity of the cut tensor to the input, from ``serdab leakage``."""

    needs_leakage = True
    higher_is_similar: ClassVar[bool] = True

    def __init__(self, bound: float) -> None:
        self.bound = bound

    def allows(self, cut: CutView) -> bool:
        if cut.leakage is None:
            return False  # no measurement, no release
        value = getattr(cut.leakage, self.name)
        return value < self.bound if self.higher_is_similar else value > self.bound

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.bound:g}"


class PearsonPolicy(SimilarityPolicy):
    name = "pearson"


class SsimPolicy(SimilarityPolicy):
    name = "ssim"


class MsePolicy(SimilarityPolicy):
    name = "mse"
    higher_is_similar = False


class AttackPolicy(PrivacyPolicy):
    """Worst case over the audited attacks and images at the cut, from ``serdab audit``."""

    needs_audit = True
    metric: ClassVar[str]

    def __init__(self, bound: float) -> None:
        self.bound = bound

    def allows(self, cut: CutView) -> bool:
        if cut.audit is None or not cut.audit.scores:
            return False  # not attacked, not released
        worst = cut.audit.worst_ssim if self.metric == "ssim" else cut.audit.worst_psnr
        return worst < self.bound

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.bound:g}"


class AttackSsimPolicy(AttackPolicy):
    name = "attack-ssim"
    metric = "ssim"


class AttackPsnrPolicy(AttackPolicy):
    name = "attack-psnr"
    metric = "psnr"


POLICIES: dict[str, type[PrivacyPolicy]] = {
    p.name: p
    for p in (
        TrustedOnly,
        ResolutionPolicy,
        PearsonPolicy,
        SsimPolicy,
        MsePolicy,
        AttackSsimPolicy,
        AttackPsnrPolicy,
    )
}


def parse_policy(text: str) -> PrivacyPolicy:
    """'resolution:20' -> ResolutionPolicy(20); unknown names list the valid forms."""
    name, _, arg = text.strip().partition(":")
    kind = POLICIES.get(name.strip().lower())
    if kind is None:
        raise PolicyError(f"unknown privacy policy {text!r}; use one of {EXAMPLES}")
    if kind is TrustedOnly:
        if arg:
            raise PolicyError(f"trusted-only takes no value, got {text!r}")
        return TrustedOnly()
    if not arg:
        if kind is ResolutionPolicy:
            return ResolutionPolicy()
        raise PolicyError(f"{name} needs a bound, e.g. {name}:0.5")
    try:
        value = float(arg)
    except ValueError:
        raise PolicyError(f"{text!r}: {arg!r} is not a number; use e.g. {EXAMPLES}") from None
    return kind(value)  # type: ignore[call-arg]


def allowed_starts(
    policy: PrivacyPolicy,
    resolutions: Sequence[tuple[int, int] | None],
    leakage: LeakageReport | None = None,
    audit: AuditReport | None = None,
) -> list[bool]:
    """For boundaries 0..M: may an untrusted stage start at block b? ``resolutions[b]`` is the tensor
    before block b (boundary 0 is the input frame, never released; boundary b > 0 is cut b-1)."""
    if policy.needs_leakage and leakage is None:
        raise PolicyError(f"policy {policy.spec} needs leakage measurements: give the model or --leakage FILE.json")
    if policy.needs_audit and audit is None:
        raise PolicyError(
            f"policy {policy.spec} needs an audit: run `serdab audit MODEL --all --json A.json`, then --audit A.json"
        )
    if audit is not None and audit.blocks != len(resolutions) - 1:
        raise PolicyError(
            f"the audit is for {audit.model} with {audit.blocks} blocks but this model has {len(resolutions) - 1}: "
            "audit the same model"
        )
    audited = {c.index + 1: c for c in audit.cuts} if audit is not None else {}
    by_boundary = {c.index + 1: c for c in leakage.cuts} if leakage is not None else {}
    if leakage is not None and len(leakage.cuts) != len(resolutions) - 2:
        raise PolicyError(
            f"leakage report has {len(leakage.cuts)} cuts but the profile has {len(resolutions) - 2}: "
            "measure both on the same model"
        )
    return [
        b > 0 and policy.allows(CutView(b, resolutions[b], by_boundary.get(b), audited.get(b)))
        for b in range(len(resolutions))
    ]
