"""Every command in README.md exists and takes the flags the README gives it.

What the commands *do* is tested where they live (tests/generate, tests/scripts, tests/export, tests/training,
test_ns_train.py, ...); this test keeps the README from drifting away from the real CLIs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NERFSTUDIO_COMMANDS = {"ns-train", "ns-viewer", "ns-export", "ns-eval"}
BIN = Path(sys.executable).parent


def readme_commands() -> list[list[str]]:
    """`uv run ...` lines of the README's bash blocks, as argument lists (without `uv run`), with continuations."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.replace("<", "_").replace(">", "_"))
                if words[:2] == ["uv", "run"] and len(words) > 2:
                    commands.append(words[2:])
    return commands


def project_scripts() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


@cache
def help_text(*argv: str) -> str:
    """`ARGV --help` (a console script, maybe with its subcommand, or a script), with tyro's line wrapping undone."""
    out = subprocess.run([*argv, "--help"], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(argv)} --help failed:\n{out.stderr[-2000:]}"
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", out.stdout))


def help_prefix(words: list[str]) -> tuple[str, ...]:
    """The command plus its subcommand (`ns-train lrm-tiny`, `ns-export poisson`), whose --help lists the flags."""
    if words[0] in ("ns-train", "ns-export"):
        return (words[0], words[1])
    return (words[0],)


COMMANDS = readme_commands()


def test_readme_has_commands():
    names = {words[0] for words in COMMANDS}
    assert {"lrm-demo", "pytest", "lrm-generate", "ns-train", "ns-viewer", "ns-export", "lrm-reconstruct"} <= names


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w[:2]) for w in COMMANDS])
def test_readme_command_exists_and_takes_its_flags(words):
    name = words[0]
    if name == "pytest":
        return
    if name == "python":
        assert (ROOT / words[1]).is_file(), f"README runs {words[1]}, which does not exist"
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert flag in help_text(sys.executable, str(ROOT / words[1])), f"{words[1]} --help lacks {flag}"
        return
    assert name in project_scripts() | NERFSTUDIO_COMMANDS, f"README runs {name}, which is not a console script"
    text = help_text(str(BIN / name), *help_prefix(words)[1:])
    for flag in (w.split("=")[0] for w in words[1:] if w.startswith("--")):
        assert f"{flag} " in text or f"{flag}," in text, f"README passes {flag} to {name}, whose --help lacks it"
