"""The LRM dataparser as a nerfstudio dataparser plugin (entry point group `nerfstudio.dataparser_configs`).

`ns-train`, `ns-viewer` and `ns-export` read this group before they import nerfstudio's models, so registering it also
loads the plugin, and with it `lrm_nerfstudio.quiet`'s warning filters, early enough to cover the deprecation
warnings that nerfstudio's own modules raise at import. The lrm methods carry their dataparser in their config and do
not need the registration for anything else.
"""

from __future__ import annotations

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from lrm_nerfstudio.data.lrm_dataparser import LRMDataParserConfig

lrm_multiview_dataparser = DataParserSpecification(
    config=LRMDataParserConfig(),
    description="lrm-multiview dataset folder (dataset.json + object folders, or tar shards), or one image",
)
