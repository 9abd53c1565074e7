"""LRM (Hong et al. 2023, arXiv 2311.04400) as a nerfstudio method."""

from lrm_nerfstudio.quiet import show_errors_as_messages, silence_known_warnings

silence_known_warnings()  # before anything below imports nerfstudio
show_errors_as_messages()

from lrm_nerfstudio.io.checkpoint_files import allow_numpy_scalars_in_checkpoints

allow_numpy_scalars_in_checkpoints()


def from_pretrained(path, device=None):
    """An LRMModel in eval mode from a weights file or a released TripoSR / OpenLRM folder (see
    `lrm_nerfstudio.pretrained.from_pretrained`; imported lazily so that loading the plugin stays cheap)."""
    from lrm_nerfstudio.pretrained import from_pretrained as load

    return load(path, device)
