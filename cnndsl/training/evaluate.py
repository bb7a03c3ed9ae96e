"""Loss, top-1 and top-5 accuracy of a model on a split, with optional test-time augmentation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .augment import tta_views
from .runtime import Runtime


@torch.no_grad()
def evaluate(model, split, rt: Runtime, mean: torch.Tensor, std: torch.Tensor,
             batch_size: int, tta: str = "none") -> dict:
    """Loss, top-1 and top-5 accuracy on a split (see `splits`), images normalised by mean and std.

    With test-time augmentation the softmax is averaged over the views (the notes:
    AlexNet's ten patches, the four corners and the centre, and their mirrors)."""
    if len(split) == 0:
        return {"loss": None, "acc": None, "top5": None, "n": 0}
    model.eval()
    # Each process a block of its own: a stream (wds:pipe:) then reads only its part.
    mine = torch.arange(len(split)).tensor_split(rt.world)[rt.rank]
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)   # loss·n, top-1, top-5, n
    for xb, yb in split.batches(list(mine.split(batch_size))):
        x, yb = split.prepare(rt.to_device(xb)), yb.to(rt.device)
        views = tta_views(x, tta, size=tuple(x.shape[-2:]))   # V×B×C×H×W
        with rt.autocast():
            logits = model(rt.layout((views.flatten(0, 1) - mean) / std))
        probs = logits.float().softmax(1).view(len(views), len(yb), -1).mean(0)
        top = probs.topk(min(5, probs.shape[1]), dim=1).indices
        sums += torch.stack([F.nll_loss(probs.clamp_min(1e-12).log(), yb, reduction="sum").double(),
                             (top[:, 0] == yb).sum().double(), (top == yb[:, None]).any(1).sum().double(),
                             torch.tensor(float(len(yb)), device=rt.device, dtype=torch.float64)])
    loss, top1, top5, n = rt.all_reduce(sums).tolist()
    return {"loss": loss / n, "acc": top1 / n, "top5": top5 / n, "n": int(n)}
