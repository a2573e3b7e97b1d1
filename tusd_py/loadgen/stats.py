"""What a run counts: requests by kind, their latencies, errors, unanswered requests,
uploads; and the percentiles over them.

A `Recorder` is filled by one worker process and sent to the parent (it pickles compactly:
latencies are `array('d')`), where the recorders of all workers are merged.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence

#: the request kinds of a tus upload, in the order they happen
KINDS = ("POST", "PATCH", "HEAD")


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100): the smallest value that at least
    q % of the values do not exceed. NaN for no values. `values` need not be sorted."""
    if not 0 < q <= 100:
        raise ValueError("the percentile must be in (0, 100]")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def percentiles(values: Sequence[float], qs: Iterable[float]) -> list[float]:
    """Several percentiles of one sample, sorting it once."""
    ordered = sorted(values)
    out = []
    for q in qs:
        if not 0 < q <= 100:
            raise ValueError("the percentile must be in (0, 100]")
        out.append(ordered[max(math.ceil(q / 100 * len(ordered)), 1) - 1] if ordered else math.nan)
    return out


class Recorder:
    """Counts for one worker (or, merged, for the whole run)."""

    __slots__ = (
        "answered",
        "bytes_acknowledged",
        "bytes_sent",
        "errors",
        "latencies",
        "sent",
        "unanswered",
        "uploads_failed",
        "uploads_ok",
        "uploads_started",
    )

    def __init__(self) -> None:
        #: seconds from the first byte sent (or the connect) to the last byte of the answer
        self.latencies: dict[str, array[float]] = {kind: array("d") for kind in KINDS}
        self.sent: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.unanswered: Counter[str] = Counter()
        #: (kind, label) -> count; label is the status code ("503") or how it failed
        self.errors: Counter[tuple[str, str]] = Counter()
        self.uploads_started = 0
        self.uploads_ok = 0
        self.uploads_failed = 0
        self.bytes_sent = 0
        self.bytes_acknowledged = 0

    def answer(self, kind: str, seconds: float) -> None:
        self.answered[kind] += 1
        self.latencies[kind].append(seconds)

    def error(self, kind: str, label: str) -> None:
        self.errors[(kind, label)] += 1

    def merge(self, other: Recorder) -> None:
        for kind in KINDS:
            self.latencies[kind].extend(other.latencies[kind])
        self.sent.update(other.sent)
        self.answered.update(other.answered)
        self.unanswered.update(other.unanswered)
        self.errors.update(other.errors)
        self.uploads_started += other.uploads_started
        self.uploads_ok += other.uploads_ok
        self.uploads_failed += other.uploads_failed
        self.bytes_sent += other.bytes_sent
        self.bytes_acknowledged += other.bytes_acknowledged

    def __getstate__(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def errors_by_label(self) -> dict[str, int]:
        """label -> count over all kinds, most frequent first."""
        totals: Counter[str] = Counter()
        for (_, label), count in self.errors.items():
            totals[label] += count
        return dict(totals.most_common())

    def kind_summary(self, kind: str) -> dict[str, object]:
        p50, p95, p99 = percentiles(self.latencies[kind], (50, 95, 99))
        values = self.latencies[kind]
        errors = {label: n for (k, label), n in sorted(self.errors.items()) if k == kind}
        return {
            "sent": self.sent[kind],
            "answered": self.answered[kind],
            "unanswered": self.unanswered[kind],
            "errors": errors,
            "p50_ms": _ms(p50),
            "p95_ms": _ms(p95),
            "p99_ms": _ms(p99),
            "max_ms": _ms(max(values)) if values else None,
            "mean_ms": _ms(sum(values) / len(values)) if values else None,
        }


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 3)
