"""The front without a search: members built from trial records."""

from __future__ import annotations

from autocompress.space import Candidate
from autocompress.study import ParetoFront
from autocompress.study._front import FrontMember
from autocompress.study._records import TrialRecord


def _record(accuracy: float, latency_ms: float, *, finetuned: bool = True) -> TrialRecord:
    return TrialRecord(
        candidate=Candidate(), channels={}, estimated_latency_ms=latency_ms,
        latency_ms=latency_ms, latency_std_ms=0.01, latency_source="estimate",
        finetuned=finetuned, accuracy=accuracy, accuracy_source="torch", finetune_steps=150,
        sparsity=0.0, params=1, nonzero_params=1, flops=1, size_bytes=1,
        compressed_size_bytes=1, seconds=1.0, artifact="trials/x.onnx" if finetuned else None)


def _front(records: dict[int, TrialRecord], budget_ms: float) -> ParetoFront:
    members = [FrontMember(n, r) for n, r in records.items() if r.finetuned]
    return ParetoFront(members, budget_ms=budget_ms, records=records)


def test_a_member_measured_slower_gives_back_the_members_it_dominated() -> None:
    records = {26: _record(0.499, 0.284), 27: _record(0.485, 0.349), 3: _record(0.413, 0.247),
               5: _record(0.7, 0.9, finetuned=False)}
    front = _front(records, budget_ms=0.363)
    assert [m.trial for m in front.within(0.363)] == [26, 3]   # 27 dominated by 26's estimate
    again = front.with_measured({26: 0.388})
    assert [m.trial for m in again.within(0.363)] == [27, 3]   # 26 is over, 27 is back
    assert again.records is front.records or again.records == front.records
    assert front.with_measured({26: 0.30}).within(0.363)[0].latency_source == "measured"


def test_without_measurements_the_front_is_the_same() -> None:
    records = {1: _record(0.9, 0.3), 2: _record(0.8, 0.2), 3: _record(0.7, 0.25)}
    front = _front(records, budget_ms=0.35)
    assert [m.trial for m in front.with_measured({}).members] == \
        [m.trial for m in front.members]
