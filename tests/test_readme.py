"""The README and the docs stay true: every command in README.md, docs/*.md and experiments/*.md exists and takes
the flags given to it, every relative link resolves, the methods table matches the registered methods, CI runs the
README's install and test commands, and the README stays a short front page.

What the commands *do* is tested where they live (tests/generate, tests/scripts, tests/export, tests/training,
test_ns_train.py, ...); this test keeps the pages from drifting away from the real CLIs.
"""

from __future__ import annotations

import json
import os
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
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments").glob("*.md"))]
README_MAX_WORDS = 2100
NERFSTUDIO_COMMANDS = {"ns-train", "ns-viewer", "ns-export", "ns-eval"}


def page_commands(page: Path) -> list[list[str]]:
    """`uv run ...` lines of a page's bash blocks, as argument lists (without `uv run` and leading `VAR=value`
    settings), with continuations."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.replace("<", "_").replace(">", "_"))
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words[:2] == ["uv", "run"] and len(words) > 2:
                    commands.append(words[2:])
    return commands


def readme_commands() -> list[list[str]]:
    return page_commands(README)


def all_commands() -> list[tuple[str, list[str]]]:
    """(page, command) for every distinct command of the README and the docs."""
    seen, found = set(), []
    for page in PAGES:
        for words in page_commands(page):
            if tuple(words) not in seen:
                seen.add(tuple(words))
                found.append((str(page.relative_to(ROOT)), words))
    return found


def project_scripts() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


HELP_RUNNER = """
import contextlib, io, json, runpy, sys
from importlib.metadata import entry_points

scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
results = {}
for argv in json.loads(sys.stdin.read()):
    out, code = io.StringIO(), 0
    sys.argv = [*argv, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if argv[0].endswith(".py"):
                runpy.run_path(argv[0], run_name="__main__")
            else:
                scripts[argv[0]].load()()
    except SystemExit as exit:
        code = exit.code or 0
    except Exception as err:
        code = repr(err)
    results[" ".join(argv)] = [code, out.getvalue()]
sys.__stdout__.write(json.dumps(results))
"""


def _help_argv(words: list[str]) -> tuple[str, ...]:
    """What to ask for --help: the command plus its subcommand (`ns-train lrm-tiny`, `ns-export poisson`), whose
    --help lists the flags, or the script file that `python` runs."""
    if words[0] == "python":
        return (str(ROOT / words[1]),)
    if words[0] in ("ns-train", "ns-export"):
        return (words[0], words[1])
    return (words[0],)


@cache
def help_texts() -> dict[str, tuple[object, str]]:
    """`--help` of every command the pages run, in one Python process: each command started on its own would import
    torch and nerfstudio again, and that would cost most of a minute per command on a loaded 2-core machine."""
    argvs = sorted({_help_argv(words) for _, words in COMMANDS if words[0] != "pytest"})
    out = subprocess.run([sys.executable, "-c", HELP_RUNNER], input=json.dumps(argvs), check=False,
                         capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "120"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return {argv: (code, text) for argv, (code, text) in json.loads(out.stdout).items()}


def help_text(*argv: str) -> str:
    """`ARGV --help` (a console script, maybe with its subcommand, or a script), with tyro's line wrapping undone."""
    code, text = help_texts()[" ".join(argv)]
    assert code == 0, f"{' '.join(argv)} --help failed ({code}):\n{text[-2000:]}"
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def help_prefix(words: list[str]) -> tuple[str, ...]:
    return _help_argv(words)


COMMANDS = all_commands()


def test_pages_have_commands():
    readme = {words[0] for words in readme_commands()}
    assert {"lrm-demo", "pytest", "lrm-import-weights", "lrm-reconstruct", "ns-train", "ns-viewer"} <= readme
    everywhere = {words[0] for _, words in COMMANDS}
    assert {"lrm-generate", "ns-export", "lrm-eval", "lrm-export-splat", "python"} <= everywhere


@pytest.mark.parametrize(("page", "words"), COMMANDS, ids=[f"{p}: {' '.join(w[:2])}" for p, w in COMMANDS])
def test_command_exists_and_takes_its_flags(page, words):
    name = words[0]
    if name == "pytest":
        return
    if name == "python":
        assert (ROOT / words[1]).is_file(), f"{page} runs {words[1]}, which does not exist"
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert flag in help_text(str(ROOT / words[1])), f"{words[1]} --help lacks {flag}"
        return
    assert name in project_scripts() | NERFSTUDIO_COMMANDS, f"{page} runs {name}, which is not a console script"
    text = help_text(*help_prefix(words))
    for flag in (w.split("=")[0] for w in words[1:] if w.startswith("--")):
        assert f"{flag} " in text or f"{flag}," in text, f"{page} passes {flag} to {name}, whose --help lacks it"


def page_links(page: Path) -> list[str]:
    """Targets of the page's Markdown links and images, outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    links = [link for link in page_links(page) if not re.match(r"[a-z]+:", link)]
    for link in links:
        target = link.split("#")[0]
        if target:
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {link}, which does not exist"


def test_link_checker_sees_links():
    """The checker is not vacuous: it finds the README's picture and docs links, and ignores code."""
    links = page_links(README)
    assert "docs/demo_heldout.png" in links and "docs/ARCHITECTURE.md" in links
    for topic in ("RECONSTRUCT", "EVALUATION", "SPLATS", "RELEASED_MODELS", "TRAINING_AT_SCALE", "DATA", "BENCHMARKS",
                  "ARCHITECTURE", "SECURITY"):  # fmt: skip
        assert f"docs/{topic}.md" in links, topic


def test_docs_paths_named_in_code_and_pages_exist():
    """A `docs/...` or `experiments/...` file named in an error message, a docstring or a page exists."""
    files = [*PAGES, *ROOT.glob("lrm_nerfstudio/**/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("experiments/*.py")]
    for path in files:
        for name in re.findall(r"\b((?:docs|experiments)/[A-Za-z_]+\.(?:md|png))", path.read_text()):
            assert (ROOT / name).is_file(), f"{path.relative_to(ROOT)} names {name}, which does not exist"


def test_readme_is_a_short_front_page():
    prose = re.sub(r"```.*?```", "", README.read_text(), flags=re.DOTALL)
    words = len(prose.split())
    assert 500 < words <= README_MAX_WORDS, f"README.md has {words} words outside code blocks"


def test_ci_runs_the_readme_install_and_test_commands():
    """.ci/run runs exactly the README's `uv sync` and `uv run pytest -q`."""
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    readme = README.read_text()
    for command in ("uv sync", "uv run pytest -q"):
        assert re.search(rf"^{re.escape(command)}(\s|$)", readme, flags=re.MULTILINE), command
        assert command in ci_lines, f".ci/run does not run {command!r}"


def _methods_row(name: str, config) -> list[str]:
    """The README's methods-table cells for a registered method (all but the free-text "for" column)."""
    model, dm = config.pipeline.model, config.pipeline.datamanager
    enc, tr = model.encoder, model.transformer
    arch = {"vit": "ViT", "dinov2": "DINOv2", "dinov2_registers": "DINOv2"}[enc.architecture]
    if enc.pretrained:
        origin = f"from `{enc.pretrained}`"
    elif name in ("lrm-triposr", "lrm-openlrm"):
        origin = "from imported weights"
    else:
        origin = "from scratch"
    encoder = f"{arch} {enc.num_layers} × {enc.hidden_size}, patch {enc.patch_size}, {model.processor.resolution}² input, {origin}"
    transformer = f"{tr.num_layers} layers × {tr.inner_dim}, {tr.triplane_low_res}² tokens"
    if tr.image_lift:
        transformer += ", image lift"
    side = tr.triplane_low_res * model.upsampler.scale
    if model.sampler == "midpoint":
        samples = f"{model.num_coarse_samples} midpoint"
    else:
        samples = f"{model.num_coarse_samples} + {model.num_importance_samples} importance"
    batch = f"{dm.objects_per_batch} objects × {dm.target_views_per_object} views × {dm.patch_size}² rays"
    batch = batch.replace("× 1 views", "× 1 view")
    return [f"`{name}`", encoder, transformer, f"3 × {side}² × {model.upsampler.out_dim}", samples, batch,
            str(config.max_num_iterations)]  # fmt: skip


def test_methods_table_matches_the_registered_methods():
    from nerfstudio.plugins.registry import discover_methods

    methods, _ = discover_methods()
    ours = [name for name in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "nerfstudio.method_configs"]]  # fmt: skip
    table = README.read_text().split("## Methods", 1)[1].split("\n\n", 2)[1]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert [row[0] for row in rows] == [f"`{name}`" for name in ours]
    for row in rows:
        expected = _methods_row(row[0].strip("`"), methods[row[0].strip("`")])
        assert [row[0], *row[2:]] == expected, (
            f"README's methods table, row {row[0]}: expected\n| {expected[0]} | ... | {' | '.join(expected[1:])} |"
        )
