"""The search: study wiring, objective, Pareto front and picking."""

from __future__ import annotations

from autocompress.study._config import RunFolder, SearchConfig
from autocompress.study._front import FrontMember, ParetoFront
from autocompress.study._search import PickResult, load_front, pick, profile_device, search

__all__ = ["FrontMember", "ParetoFront", "PickResult", "RunFolder", "SearchConfig",
           "load_front", "pick", "profile_device", "search"]
