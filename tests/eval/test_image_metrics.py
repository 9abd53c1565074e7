"""Known answers of the mask IoU that lrm-eval, the pipeline's held-out summary and the ablation runner report."""

import torch

from lrm_nerfstudio.eval.image_metrics import mask_iou


def test_mask_iou_known_answers():
    true = torch.zeros(4, 4, 1)
    true[:2] = 1.0  # top half: 8 pixels
    pred = torch.zeros(4, 4, 1)
    pred[:, :2] = 0.9  # left half: 8 pixels, 4 shared with the truth
    assert mask_iou(pred, true) == 4 / 12
    assert mask_iou(true, true) == 1.0
    assert mask_iou(torch.full_like(true, 0.4), true) == 0.0  # accumulation below 0.5 is background
    assert mask_iou(torch.zeros_like(true), torch.zeros_like(true)) == 1.0  # both empty
