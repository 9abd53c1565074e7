"""experiments/retrieval_baseline.py: retrieving the test object itself reproduces its unseen silhouettes; another
object does not; bad arguments are named."""

from __future__ import annotations

import pytest
from lrm_run_helpers import load_script


def test_the_object_itself_is_retrieved_and_reproduces_its_views(procedural_dataset):
    retrieval = load_script("retrieval_baseline", "experiments")
    own = retrieval.main(
        retrieval.RetrievalConfig(
            database=procedural_dataset, database_splits=("test",), eval_data=procedural_dataset, k=[1]
        )
    )["k=1"]
    # the same mesh from the same cameras: the silhouettes agree up to the data's anti-aliased edges
    assert own["mask_iou"] > 0.97 and own["num_views"] == 7
    assert own["psnr_over_background"] > 10
    other = retrieval.main(
        retrieval.RetrievalConfig(database=procedural_dataset, eval_data=procedural_dataset, k=[1, 3])
    )
    assert other["k=1"]["mask_iou"] < own["mask_iou"] and other["k=3"]["psnr"] < own["psnr"]


def test_bad_arguments_are_named(procedural_dataset):
    retrieval = load_script("retrieval_baseline", "experiments")
    with pytest.raises(ValueError, match="--k"):
        retrieval.main(retrieval.RetrievalConfig(database=procedural_dataset, eval_data=procedural_dataset, k=[0]))
    with pytest.raises(ValueError, match="fewer than k=50"):
        retrieval.main(retrieval.RetrievalConfig(database=procedural_dataset, eval_data=procedural_dataset, k=[50]))
