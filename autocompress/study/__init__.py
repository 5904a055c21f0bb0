"""The search: study wiring, objective, Pareto front and picking."""

from __future__ import annotations

from autocompress.study._calibrate import CalibrationResult, calibrate_device, device_scale
from autocompress.study._config import RunFolder, SearchConfig
from autocompress.study._front import FrontMember, ParetoFront
from autocompress.study._pick import PickResult, load_front, pick
from autocompress.study._records import RunInfo, TrialRecord
from autocompress.study._report import write_report
from autocompress.study._retarget import RetargetedTrial, RetargetResult, retarget
from autocompress.study._search import search
from autocompress.study._tools import ModelEstimate, estimate_latency

__all__ = ["CalibrationResult", "FrontMember", "ModelEstimate", "ParetoFront", "PickResult",
           "RetargetResult", "RetargetedTrial", "RunFolder", "RunInfo", "SearchConfig",
           "TrialRecord", "calibrate_device", "device_scale", "estimate_latency", "load_front",
           "pick", "retarget", "search", "write_report"]
