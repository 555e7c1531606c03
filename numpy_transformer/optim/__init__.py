"""Optimizers with PyTorch's update rules (SGD, Adam, AdamW), gradient clipping and learning-rate schedules.
Each optimizer's file opens with its update rule as a function under its formula, then the thin class.

``sgd`` (sgd_update, SGD), ``adam`` (adam_update, Adam), ``adamw`` (adamw_update, AdamW),
``optimizer`` (Optimizer, ParamGroup: parameter groups, ``lr``, the state dict), ``clip``
(clip_grad_norm), ``schedules`` (inverse_sqrt_warmup, linear_warmup_cosine).
"""

from .adam import Adam, adam_update
from .adamw import AdamW, adamw_update
from .clip import clip_grad_norm
from .optimizer import Optimizer, ParamGroup
from .schedules import inverse_sqrt_warmup, linear_warmup_cosine
from .sgd import SGD, sgd_update

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "ParamGroup",
    "adam_update",
    "adamw_update",
    "clip_grad_norm",
    "inverse_sqrt_warmup",
    "linear_warmup_cosine",
    "sgd_update",
]
