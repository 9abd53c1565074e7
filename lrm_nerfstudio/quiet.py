"""Silence the known third-party warnings that every command would otherwise print before anything useful.

Only these, matched by message, category and the module that issues them; every other warning still shows.
"""

from __future__ import annotations

import warnings

KNOWN_WARNINGS = (
    # nerfstudio 1.1.5's field_components/activations.py decorates trunc_exp with torch.cuda.amp.custom_fwd /
    # custom_bwd, which torch >= 2.4 deprecates (one FutureWarning for each, at import)
    (r"`torch\.cuda\.amp\.custom_(fwd|bwd)\(args\.\.\.\)` is deprecated", FutureWarning, r"nerfstudio\."),
)
"""(message regex, category, module regex) of each silenced warning."""


def silence_known_warnings() -> None:
    """Install the filters of `KNOWN_WARNINGS` (idempotent: warnings.filterwarnings drops duplicates)."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
