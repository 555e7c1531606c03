r"""AdamW, as ``torch.optim.AdamW``: the update rule :func:`adamw_update`, then :class:`AdamW`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..functional.checks import check_integer
from .adam import Adam, adam_update, check_adam_hyperparameters
from .optimizer import check_update_arrays


def adamw_update(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    step: int,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    max_exp_avg_sq: np.ndarray | None = None,
    *,
    check: bool = True,
    scratch: np.ndarray | None = None,
) -> None:
    r"""Update :math:`t` of one parameter by Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    The rule of ``torch.optim.AdamW``. The parameter is shrunk by :math:`\gamma \lambda`
    **before** the Adam update, and the decay never enters the moments::

        \theta_{t-1}' = \theta_{t-1} (1 - \gamma \lambda)
        m_t, v_t, \hat v_t  as in Adam, from the raw gradient g_t
        \theta_t = \theta_{t-1}' - \frac{\gamma}{1 - \beta_1^t} \cdot
                   \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    So with a zero gradient an AdamW parameter decays geometrically, while an Adam
    parameter with L2 decay moves by about :math:`\gamma` per step whatever its size (its
    decay term is normalised like any gradient).

    The arguments are those of :func:`~numpy_transformer.optim.adam_update`; only the default
    ``weight_decay=1e-2`` and its meaning differ (``scratch``: the update's temporary, as there).
    Everything is checked before the parameter is shrunk (unless ``check=False``).
    """
    if check:
        given = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
        hyper = check_adam_hyperparameters({**given, "amsgrad": max_exp_avg_sq is not None}, lambda key: key)
        lr, beta1, beta2, eps, weight_decay = (hyper[k] for k in given)
        step = check_integer("step", step, low=1)
        check_update_arrays(param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, max_exp_avg_sq=max_exp_avg_sq)

    if weight_decay != 0.0:
        param *= 1.0 - lr * weight_decay  # shrink the parameter first, the moments never see it
    adam_update(
        param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, 0.0, max_exp_avg_sq, check=False, scratch=scratch
    )


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    The rule is written out in :func:`adamw_update` (the class's ``update_rule``); everything
    else is :class:`Adam`'s. Parameters are those of :class:`Adam`; only the default
    ``weight_decay=1e-2`` differs.
    """

    update_rule: ClassVar[Callable[..., None]] = staticmethod(adamw_update)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
