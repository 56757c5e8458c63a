"""Per-step statistics: counts, drop reasons and seconds, mergeable across shards and workers."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepStats:
    """What one step did: item counts, drops by reason, and wall-clock seconds."""

    seconds: float = 0.0
    counts: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n

    def merge(self, other: "StepStats") -> None:
        self.seconds += other.seconds
        self.counts.update(other.counts)
        self.drops.update(other.drops)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 4), "counts": dict(sorted(self.counts.items())),
                "drops": dict(sorted(self.drops.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepStats":
        return cls(float(d.get("seconds", 0.0)), Counter(d.get("counts", {})), Counter(d.get("drops", {})))


@dataclass
class RunStats:
    """Statistics of a whole run (or one shard of it): one :class:`StepStats` per step, plus totals."""

    steps: dict[str, StepStats] = field(default_factory=dict)
    totals: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # "stage/reason" -> count (videos and events)

    def step(self, name: str) -> StepStats:
        return self.steps.setdefault(name, StepStats())

    def merge(self, other: "RunStats") -> None:
        for name, st in other.steps.items():
            self.step(name).merge(st)
        self.totals.update(other.totals)
        self.failures.update(other.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"totals": dict(sorted(self.totals.items())),
                "failures": dict(sorted(self.failures.items())),
                "steps": {k: v.to_dict() for k, v in self.steps.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunStats":
        return cls({k: StepStats.from_dict(v) for k, v in d.get("steps", {}).items()},
                   Counter(d.get("totals", {})), Counter(d.get("failures", {})))

    def save(self, path: Path) -> None:
        from pite.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "RunStats":
        return cls.from_dict(json.loads(Path(path).read_text()))
