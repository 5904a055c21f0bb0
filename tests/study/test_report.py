"""The HTML report of a run: content, the picked export, and a headless render."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from autocompress.exceptions import RunError
from autocompress.study import ParetoFront, SearchConfig, load_front, pick
from autocompress.study._report import write_report


@pytest.fixture(scope="module")
def run(digits_config: SearchConfig, digits_front: ParetoFront) -> Path:
    return Path(digits_config.out)


@pytest.fixture(scope="module")
def front(run: Path) -> ParetoFront:
    return load_front(run)


@pytest.fixture(scope="module")
def report(run: Path) -> Path:
    return write_report(run)


def test_report_is_one_self_contained_page(run: Path, front: ParetoFront, report: Path) -> None:
    assert report == run / "report.html"
    text = report.read_text()
    assert text.count('<img src="data:image/png;base64,') >= 2
    assert "<link" not in text and "<script" not in text and "http://" not in text
    assert f"{front.budget_ms:.4g} ms" in text
    assert "resnet20" in text and "digits" in text
    table = text[text.index('<table class="dataframe front">'):]
    table = table[:table.index("</table>")]
    assert front.members
    for member in front.members:
        assert f"<td>{member.trial}</td>" in table
    assert "not measured; run autocompress pick" in text
    picked = front.pick(front.budget_ms)
    assert f"<tr class='picked'>\n      <td>★</td>\n      <td>{picked.trial}</td>" in table


def test_report_shows_the_exported_pick_and_its_measurement(run: Path, front: ParetoFront,
                                                            tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    budget = 10 * front.baseline.latency_ms   # generous: the pick always fits
    result = pick(copy, budget, tmp_path / "picked")
    assert result.member is not None and result.measured_latency_ms is not None
    text = write_report(copy, tmp_path / "r.html").read_text()
    assert f"exported by autocompress pick to {tmp_path / 'picked'}" in text
    assert f"{result.measured_latency_ms:.4g} ms on " in text
    assert "not measured" not in text


def test_a_missing_run_folder_is_a_run_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not a search run folder"):
        write_report(tmp_path / "nothing")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_a_headless_browser(report: Path, tmp_path: Path) -> None:
    png = tmp_path / "page.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
         "--window-size=1200,2000", report.resolve().as_uri()],
        check=True, capture_output=True, timeout=120)
    assert png.stat().st_size > 20_000
