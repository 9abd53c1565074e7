"""Progress of long stages: periodic plain lines off a terminal, a rich bar on one."""

from __future__ import annotations

import io

from rich.console import Console

from lrm_nerfstudio.progress import stage_progress


def test_log_lines_when_not_a_terminal(monkeypatch):
    out = io.StringIO()
    console = Console(file=out, width=200)  # a StringIO is not a terminal
    now = [0.0]
    monkeypatch.setattr("lrm_nerfstudio.progress.time.monotonic", lambda: now[0])
    with stage_progress("rendering", total=4, unit="objects", console=console, log_every_s=10) as bar:
        now[0] = 1.0
        bar.advance()  # 1 s after the first line: no line
        now[0] = 12.0
        bar.advance()  # 12 s: a line
        now[0] = 13.0
        bar.update(description="rendering, last batch")  # the description changed: a line
        now[0] = 20.0
        bar.advance(2)
    lines = out.getvalue().splitlines()
    assert lines == [
        "rendering: 0/4 objects (0%), 0 s elapsed",
        "rendering: 2/4 objects (50%), 12 s elapsed, about 12 s left",
        "rendering, last batch: 2/4 objects (50%), 13 s elapsed, about 13 s left",
        "rendering, last batch: 4 objects in 20.0 s",
    ]
    assert "\x1b" not in out.getvalue()  # no control codes in a log file


def test_disabled_reports_nothing():
    out = io.StringIO()
    with stage_progress("quiet", total=2, console=Console(file=out), enabled=False) as bar:
        bar.advance(2)
    assert out.getvalue() == "" and bar.completed == 2


def test_a_terminal_gets_a_rich_bar():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with stage_progress("meshing", total=3, console=console) as bar:
        assert bar.bar is not None
        bar.advance(3)
    assert "meshing" in out.getvalue() and "3/3" in out.getvalue()
