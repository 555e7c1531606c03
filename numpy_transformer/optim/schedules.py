r"""Learning-rate schedules, as pure functions of the update number.

``optimizer.lr`` is an attribute (checked: >= 0), read at every
:meth:`~numpy_transformer.optim.Optimizer.step`; set it just before each update::

    opt.lr = inverse_sqrt_warmup(opt.step_count + 1, d_model=512, warmup_steps=4000)
    opt.step()

``opt.lr`` exists only with one group; with several, reading or assigning it raises
``AttributeError`` (assigning one rate to all would silently erase a layer-wise decay).
Set ``opt.param_groups[i]["lr"]``, or scale every group's ``initial_lr`` at once with
:meth:`~numpy_transformer.optim.Optimizer.set_lr_scale` (``LambdaLR``'s rule)::

    opt.set_lr_scale(linear_warmup_cosine(opt.step_count + 1, 1.0, warmup_steps=100, total_steps=1000))
    opt.step()

Updates are numbered from 1 (the first ``step()`` is update 1), as in the Transformer
paper. In the usual PyTorch loop (``optimizer.step(); scheduler.step()``) a
``LambdaLR`` calls its function with ``last_epoch`` = 0 for the first update, so update
``s`` here is ``last_epoch = s - 1`` there. Both schedules give 0 for ``step=0`` (before any
update) when they have a warm-up.
"""

from __future__ import annotations

import math

from ..functional.checks import check_integer, check_real


def inverse_sqrt_warmup(step: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    r"""The schedule of "Attention Is All You Need": linear warm-up, then :math:`1/\sqrt{\text{step}}` decay.

    ::

        \text{lr}(s) = \text{factor} \cdot d_{\text{model}}^{-1/2} \cdot
                       \min\left(s^{-1/2},\; s \cdot w^{-3/2}\right),   s = 1, 2, \dots

    with :math:`w` = ``warmup_steps``. The two branches meet at :math:`s = w`, the peak,
    :math:`\text{factor} / \sqrt{d_{\text{model}} w}`. ``step=0`` (before any update)
    gives 0, the limit of the warm-up line.

    Parameters
    ----------
    step : int
        Number of the update about to be made, >= 0: ``optimizer.step_count + 1``. In a
        PyTorch loop with ``LambdaLR`` this is ``last_epoch + 1``, so the equivalent is
        ``LambdaLR(opt, lambda e: inverse_sqrt_warmup(e + 1, ...))`` with base lr 1.
    d_model : int
        Model width, >= 1.
    warmup_steps : int
        :math:`w` >= 1.
    factor : float, default 1.0
        Overall scale, >= 0.

    Returns
    -------
    float
        The learning rate for update ``step``.
    """
    step = check_integer("step", step)
    d_model = check_integer("d_model", d_model, low=1)
    warmup_steps = check_integer("warmup_steps", warmup_steps, low=1)
    factor = check_real("factor", factor, low=0.0)
    if step == 0:
        return 0.0
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def linear_warmup_cosine(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    r"""Linear warm-up to ``base_lr``, then half a cosine down to ``min_lr`` at ``total_steps``, then flat.

    ::

        \text{lr}(s) = \text{base\_lr} \cdot s / w                                  0 <= s < w
        \text{lr}(s) = \text{min\_lr} + (\text{base\_lr} - \text{min\_lr})
                       \cdot \tfrac12 \left(1 + \cos\left(\pi \frac{s - w}{T - w}\right)\right)   w <= s <= T
        \text{lr}(s) = \text{min\_lr}                                               s > T

    with :math:`w` = ``warmup_steps`` and :math:`T` = ``total_steps``. The peak
    ``base_lr`` is at :math:`s = w`; update 1 already gets ``base_lr / w``.

    In PyTorch the same rates (for ``w >= 2``, updates 1 to ``T``) come from
    ``SequentialLR(opt, [LinearLR(opt, 1/w, 1.0, total_iters=w-1),
    CosineAnnealingLR(opt, T_max=T-w, eta_min=min_lr)], milestones=[w-1])`` with base lr
    ``base_lr``. After ``T`` PyTorch's cosine rises again (it is periodic); this one stays
    at ``min_lr``.

    Parameters
    ----------
    step : int
        Number of the update about to be made, >= 0: ``optimizer.step_count + 1``
        (PyTorch's ``last_epoch + 1``).
    base_lr : float
        Peak learning rate, >= 0.
    warmup_steps : int
        :math:`w` >= 0; 0 means no warm-up.
    total_steps : int
        :math:`T` >= max(1, w): where the cosine reaches ``min_lr``.
    min_lr : float, default 0.0
        Final learning rate, in [0, base_lr].

    Returns
    -------
    float
        The learning rate for update ``step``.
    """
    step = check_integer("step", step)
    base_lr = check_real("base_lr", base_lr, low=0.0)
    warmup_steps = check_integer("warmup_steps", warmup_steps)
    total_steps = check_integer("total_steps", total_steps, low=max(1, warmup_steps))
    min_lr = check_real("min_lr", min_lr, low=0.0)
    if min_lr > base_lr:
        raise ValueError(f"min_lr: expected a number <= base_lr={base_lr!r}, got {min_lr!r}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step <= total_steps:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr
