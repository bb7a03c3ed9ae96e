"""The optimiser and the learning-rate schedules (every schedule moves per iteration)."""
from __future__ import annotations

import math

import torch

from ..errors import CnnDslError
from .settings import Config


def make_optimizer(c: Config, params) -> torch.optim.Optimizer:
    if not params:
        raise CnnDslError("every parameter is frozen: nothing to train (freeze fewer layers)")
    if c.optimizer == "sgd":   # mini-batch SGD with momentum (the notes; Sutskever et al. 2013)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    if c.optimizer == "adam":  # weight decay as an L2 term in the gradient (Kingma & Ba 2015)
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
    return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)  # decoupled decay


def lr_at(c: Config, step: int, steps_per_epoch: int) -> float:
    """The learning rate at iteration `step`: every schedule moves per iteration, not per epoch.

    >>> c = Config(lr=0.1, epochs=10, schedule="cosine", warmup_epochs=1)
    >>> lr_at(c, 0, 10), lr_at(c, 9, 10), round(lr_at(c, 55, 10), 4)   # warm-up, peak, middle
    (0.01, 0.1, 0.05)
    """
    total = max(1, c.epochs * steps_per_epoch)
    warmup = round(c.warmup_epochs * steps_per_epoch)
    if c.schedule == "onecycle":
        return c.lr * _one_cycle(step, total, warmup or round(0.3 * total))
    if step < warmup:  # linear warm-up (Goyal et al. 2017)
        return c.lr * (step + 1) / warmup
    if c.schedule == "step":
        step_size = c.step_size or max(1, c.epochs // 3)
        return c.lr * c.gamma ** (step // (step_size * steps_per_epoch))
    if c.schedule == "cosine":  # SGDR without restarts (Loshchilov & Hutter 2017)
        progress = (step - warmup) / max(1, total - warmup)
        return c.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return c.lr


def _one_cycle(step: int, total: int, rise: int) -> float:
    """Smith 2018's one cycle, as torch's OneCycleLR: lr/25 up to lr, then down to lr/25e4."""
    start, end = 1 / 25, 1 / 25e4
    if step < rise:
        return start + (1 - start) * (1 - math.cos(math.pi * step / rise)) / 2
    progress = (step - rise) / max(1, total - rise)
    return end + (1 - end) * (1 + math.cos(math.pi * progress)) / 2
