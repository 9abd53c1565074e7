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


def _message_hook(previous):
    def hook(exc_type, exc, tb):
        # the project's own errors (bad data, weights, configs, empty reconstructions) are ValueErrors whose message
        # names the file and the problem: a user of ns-export, ns-train or ns-viewer gets that line, not a traceback
        # through nerfstudio. LRM_TRACEBACK=1 shows the traceback as well.
        if (
            isinstance(exc, ValueError)
            and type(exc).__module__.startswith("lrm_nerfstudio.")
            and not os.environ.get("LRM_TRACEBACK")
        ):
            print(f"error: {exc}", file=sys.stderr)
            return
        previous(exc_type, exc, tb)

    hook.lrm_message_hook = True  # type: ignore[attr-defined]
    return hook


def show_errors_as_messages() -> None:
    """Print an uncaught project error (a ValueError from `lrm_nerfstudio`) as one `error:` line, exit status 1.

    Installed where the plugin loads, so it covers nerfstudio's own commands too. Idempotent.
    """
    if not getattr(sys.excepthook, "lrm_message_hook", False):
        sys.excepthook = _message_hook(sys.excepthook)
