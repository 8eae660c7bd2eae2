"""What a surgery did to a model: :class:`SurgeryReport`, and :class:`NothingToChangeError` when it found nothing."""
from __future__ import annotations

from dataclasses import dataclass, field


class NothingToChangeError(ValueError):
    """A surgery found nothing it could change in the model (the message says what it looked for and, for each
    candidate it passed over, why). A ``ValueError``: the model does not fit the request."""


@dataclass
class SurgeryReport:
    """What one surgery changed, in place, in a model.

    Attributes:
        technique: the surgery's name (``"add_stochastic_depth"``).
        changed: ``(module path, what was done)`` for each change, in the model's order (``""`` is the root).
        skipped: ``(module path, reason)`` for each candidate left as it was.
        notes: anything else the user should know (assumptions made, modules that could not be traced).

    ``len(report)`` is the number of changes; ``str(report)`` a readable summary, one line per change.
    """
    technique: str
    changed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.changed)

    def __str__(self) -> str:
        lines = [f"{self.technique}: changed {len(self.changed)}, skipped {len(self.skipped)}"]
        lines += [f"  {path or '<model>'}: {what}" for path, what in self.changed]
        lines += [f"  skipped {path or '<model>'}: {why}" for path, why in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def require_changes(self, looked_for: str) -> "SurgeryReport":
        """This report, or :class:`NothingToChangeError` naming what was looked for and why each candidate was
        skipped when nothing was changed."""
        if not self.changed:
            by_reason: dict[str, list[str]] = {}
            for p, r in self.skipped:               # one reason given for many places is said once
                by_reason.setdefault(r, []).append(p or "<model>")
            why = "; ".join(f"{', '.join(ps[:3]) + (f' and {len(ps) - 3} more' if len(ps) > 3 else '')}: {r}"
                            for r, ps in by_reason.items())
            raise NothingToChangeError(f"{self.technique}: found no {looked_for} to change"
                                       + (f" ({why})" if why else ""))
        return self
