"""Silence the known third-party warnings that every command would otherwise print before anything useful.

Only these, matched by message, category and the module that issues them; every other warning still shows. Each was
seen in the stderr of `ns-train lrm-tiny`, `lrm-eval` or `lrm-demo` (torch 2.13, nerfstudio 1.1.5, torchmetrics 1.x)
and none is something a user of this plugin can act on: they are about code inside those libraries.
"""

from __future__ import annotations

import os
import sys
import warnings

_INDEXING = r"Using a non-tuple sequence for multidimensional indexing is deprecated"

KNOWN_WARNINGS = (
    # nerfstudio 1.1.5's field_components/activations.py decorates trunc_exp with torch.cuda.amp.custom_fwd /
    # custom_bwd, which torch >= 2.4 deprecates (one FutureWarning for each, at import)
    (r"`torch\.cuda\.amp\.custom_(fwd|bwd)\(args\.\.\.\)` is deprecated", FutureWarning, r"nerfstudio\."),
    # nerfstudio's Trainer builds torch.cuda.amp.GradScaler (deprecated in torch 2.4), even when it stays disabled
    (r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", FutureWarning, r"nerfstudio\.engine\.trainer"),
    # nerfstudio's cameras.py indexes tensors with a list of slices (torch 2.9 will read it differently; nerfstudio's
    # use is the tuple meaning, which is what torch gives today)
    (_INDEXING, UserWarning, r"nerfstudio\.cameras\.cameras"),
    # nerfstudio's writer calls float() on the loss tensors that the trainer hands it, graph attached
    (r"Converting a tensor with requires_grad=True to a scalar", UserWarning, r"nerfstudio\.utils\.writer"),
    # torchmetrics' functional namespace re-exports moved image metrics with a deprecation notice, raised through its
    # own rank_zero_warn helper (so the warning's module is torchmetrics', whoever imported the name)
    (r"Importing `\w+` from `torchmetrics\.functional` was deprecated", FutureWarning, r"torchmetrics\."),
)
"""(message regex, category, module regex) of each silenced warning."""


def silence_known_warnings() -> None:
    """Install the filters of `KNOWN_WARNINGS` (idempotent: warnings.filterwarnings drops duplicates)."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


# ------------------------------------------------------------------------------- nerfstudio's --load-config reads
_CONFIG_READERS = {
    # (module, function) -> how to find the --load-config path among that frame's locals
    ("nerfstudio.utils.eval_utils", "eval_setup"): lambda f: f.get("config_path"),  # ns-export, ns-viewer, ns-eval
    # ns-train --load-config: `config` is the command line's until the file is read, then what the file built
    ("nerfstudio.scripts.train", "main"): lambda f: getattr(f.get("config"), "load_config", None) or _argv_config(),
}
_READ_LINES = ("yaml.load(", "assert isinstance(config, TrainerConfig)", "all_methods[config.method_name]")
"""The statements of those functions that read the config file and check what it built; an error raised anywhere
else in them (a bad checkpoint, a dataset, a bug) is not about the config file and keeps its own handling."""


def _argv_config() -> str | None:
    args = sys.argv
    for i, arg in enumerate(args):
        if arg == "--load-config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--load-config="):
            return arg.split("=", 1)[1]
    return None


def _yaml_problem(err: BaseException) -> str:
    import yaml

    if isinstance(err, yaml.MarkedYAMLError):
        where = f" (line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1})" if err.problem_mark else ""
        return f"{err.problem or err.context}{where}"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def config_read_message(exc: BaseException, tb) -> str | None:
    """The one-line message for an error that nerfstudio raised while it read a `--load-config` file, naming the
    file and the problem; None for any other error.

    nerfstudio parses the file itself (`eval_setup`, `ns-train`'s main) with PyYAML's full loader before any of the
    plugin's code runs on it, so the plugin cannot check the file first: it recognises the failure from the frame
    that was reading. The file is still code (PyYAML builds any Python object it names), as in nerfstudio; this
    only words the failure.
    """
    import linecache

    while tb is not None:
        frame = tb.tb_frame
        locate = _CONFIG_READERS.get((frame.f_globals.get("__name__"), frame.f_code.co_name))
        if locate is not None:
            from nerfstudio.engine.trainer import TrainerConfig  # loaded: the frame is nerfstudio's

            line = linecache.getline(frame.f_code.co_filename, tb.tb_lineno)
            built = frame.f_locals.get("config")
            # ns-train goes on with whatever the file built: its first use of a non-config fails further down
            not_a_config = isinstance(exc, AttributeError) and not isinstance(built, TrainerConfig)
            if any(statement in line for statement in _READ_LINES) or not_a_config:
                path = locate(frame.f_locals)
                if path is None:
                    return None
                if isinstance(exc, FileNotFoundError):
                    return f"{path}: config file not found (pass the config.yml that ns-train wrote)"
                if isinstance(exc, IsADirectoryError):
                    return f"{path}: is a folder, not a config file (pass the config.yml that ns-train wrote)"
                if isinstance(exc, AssertionError) or not_a_config:
                    return f"{path}: not a nerfstudio config (it holds a {type(built).__name__}, not a TrainerConfig)"
                if isinstance(exc, KeyError):
                    return f"{path}: method {exc.args[0]!r} is not installed here (no nerfstudio method of that name)"
                return f"{path}: not a readable nerfstudio config ({type(exc).__name__}: {_yaml_problem(exc)})"
        tb = tb.tb_next
    return None


def _message_hook(previous):
    def hook(exc_type, exc, tb):
        if os.environ.get("LRM_TRACEBACK"):  # LRM_TRACEBACK=1 shows the traceback
            previous(exc_type, exc, tb)
            return
        # the project's own errors (bad data, weights, configs, empty reconstructions) are ValueErrors whose message
        # names the file and the problem: a user of ns-export, ns-train or ns-viewer gets that line, not a traceback
        # through nerfstudio.
        if isinstance(exc, ValueError) and type(exc).__module__.startswith("lrm_nerfstudio."):
            print(f"error: {exc}", file=sys.stderr)
            return
        message = config_read_message(exc, tb) if isinstance(exc, Exception) else None
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            return
        previous(exc_type, exc, tb)

    hook.lrm_message_hook = True  # type: ignore[attr-defined]
    return hook


def print_error(message: str) -> None:
    """A command's one-line `error:` message (the message escaped: file names may hold rich's brackets)."""
    from nerfstudio.utils.rich_utils import CONSOLE
    from rich.markup import escape

    CONSOLE.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True, highlight=False)


def show_errors_as_messages() -> None:
    """Print an uncaught project error (a ValueError from `lrm_nerfstudio`) as one `error:` line, exit status 1.

    Installed where the plugin loads, so it covers nerfstudio's own commands too. Idempotent.
    """
    if not getattr(sys.excepthook, "lrm_message_hook", False):
        sys.excepthook = _message_hook(sys.excepthook)
