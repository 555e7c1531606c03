r"""Text generation with a :class:`~numpy_transformer.GPT`: temperature, top-k, top-p, and a key/value cache.

Shape legend: ``B`` batch, ``P`` prompt length, ``N`` new tokens, ``L`` tokens fed at once,
``C`` d_model, ``H`` heads, ``D = C // H``, ``V`` vocabulary size.

From logits to the next token
-----------------------------
:func:`filter_logits` applies, in this order (the order of Hugging Face's ``generate``):

1. **temperature** :math:`\tau > 0`: :math:`z = \text{logits} / \tau`. Below 1 it sharpens
   the distribution, above 1 it flattens it.
2. **top-k**: keep the ``k`` largest :math:`z` (and any token tied with the ``k``-th).
3. **top-p** (nucleus): with :math:`p = \mathrm{softmax}(z)` over the tokens still kept,
   keep the *smallest* set of most likely tokens whose probabilities add up to at least
   ``top_p``. A token is kept when the mass of the tokens ranked strictly above it is
   below ``top_p``, so the most likely token is always kept. Equal probabilities are
   ranked by token id (lower first).

Removed tokens get ``-inf``; :func:`sampling_distribution` is the softmax of that: zero
outside the kept set, renormalised inside it. :func:`generate` samples from it by inverse
transform (one uniform number per row and step, from ``rng``), which never picks a token of
probability zero.

**Greedy decoding is** ``temperature=0``: the most likely token (the lowest id among equal
maxima) at every step, no randomness, ``top_k`` / ``top_p`` irrelevant (the arg-max is in
every kept set). It is the limit of sampling as :math:`\tau \to 0`.

The key/value cache, and why it is exact
----------------------------------------
A GPT's position ``t`` reads the positions ``0..t`` through self-attention and nothing
else: every other operation (embedding, LayerNorm, projections, feed-forward, the head)
works on one position at a time. So the keys and values that position ``s`` contributes
in layer ``i`` are a function of ``ids[:s + 1]`` only, and they do not change when tokens
are appended. :class:`GPTKVCache` stores them (pre-allocated, ``(B, H, capacity, D)`` per
layer, in the :class:`~numpy_transformer.modules.kv_cache.KVCache` that the encoder–decoder's
decoding uses too) and, for each new position, computes only that position's row through
every layer, attending over the stored keys. Step ``t`` then costs ``O(t)`` (one query against ``t + 1``
keys) instead of the ``O(t^2)`` attention and ``O(t)`` projections of re-running the whole
prefix, and its logits are the same numbers: the same operations on the same inputs. Only
rounding can differ, because a matrix product over ``t`` rows and one over a single row may
add in a different order (measured: ~1e-16 relative in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..functional.checks import check_float_array, check_int
from ..functional.linear import linear_forward
from ..functional.softmax import softmax_forward
from ..models.gpt import GPT
from ..models.llama import Llama, LlamaKVCache
from ..modules.kv_cache import KVCache, cached_encoder_layer

__all__ = [
    "GPTKVCache",
    "GenerationResult",
    "check_sampling_args",
    "filter_logits",
    "generate",
    "sample",
    "sampling_distribution",
]


# ---------------------------------------------------------------------------- arguments


def check_sampling_args(temperature: object, top_k: object, top_p: object) -> tuple[float, int | None, float | None]:
    """``temperature >= 0`` (0 = greedy), ``top_k`` None or an int >= 1, ``top_p`` None or in (0, 1]."""
    if (
        not isinstance(temperature, (int, float, np.integer, np.floating))
        or isinstance(temperature, (bool, np.bool_))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature: expected a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None:
        top_k = check_int("top_k", top_k, 1, None)
    if top_p is not None:
        ok = isinstance(top_p, (int, float, np.integer, np.floating)) and not isinstance(top_p, (bool, np.bool_))
        if not ok or not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p: expected None or a probability in (0, 1], got {top_p!r}")
        top_p = float(top_p)
    return float(temperature), top_k, top_p


# ---------------------------------------------------------------------------- logits -> distribution


def filter_logits(
    logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """``logits`` (..., V) -> ``logits / temperature`` with ``-inf`` at every removed token (..., V).

    A pure function (see the module docstring for the rules). ``temperature=0`` keeps
    only the arg-max, at score 0. ``top_k`` larger than ``V`` keeps everything.
    """
    check_float_array("logits", logits, ndim_min=1)
    temperature, top_k, top_p = check_sampling_args(temperature, top_k, top_p)
    V = logits.shape[-1]
    if temperature == 0:
        out = np.full_like(logits, -np.inf)
        np.put_along_axis(out, logits.argmax(axis=-1)[..., None], 0, axis=-1)
        return out
    z = logits / logits.dtype.type(temperature)  # (..., V)
    if top_k is not None and top_k < V:
        kth = np.partition(z, V - top_k, axis=-1)[..., V - top_k : V - top_k + 1]  # (..., 1) the k-th largest
        z = np.where(z >= kth, z, -np.inf)
    if top_p is not None and top_p < 1.0:
        p, _ = softmax_forward(z)  # (..., V) over the tokens top-k kept
        order = np.argsort(-p, axis=-1, kind="stable")  # most likely first; ties: lower id first
        p_sorted = np.take_along_axis(p, order, axis=-1)
        mass_above = np.cumsum(p_sorted, axis=-1) - p_sorted  # probability of the tokens ranked above
        keep_sorted = mass_above < top_p  # the first token has mass_above 0: always kept
        keep = np.empty_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        z = np.where(keep, z, -np.inf)
    return z


def sampling_distribution(
    logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """The distribution :func:`generate` samples from: ``softmax(filter_logits(...))``, (..., V), rows sum to 1."""
    probs, _ = softmax_forward(filter_logits(logits, temperature, top_k, top_p))
    return probs


def sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row of ``probs`` (B, V) by inverse transform: int64 (B,), one ``rng.random`` per row.

    Token ``j`` is chosen when ``cdf[j - 1] <= u * cdf[-1] < cdf[j]``; a token of probability
    zero has ``cdf[j] == cdf[j - 1]`` and can never be chosen.
    """
    cdf = np.cumsum(probs, axis=-1)  # (B, V)
    u = rng.random(probs.shape[0]) * cdf[:, -1]  # (B,)
    return np.sum(cdf <= u[:, None], axis=-1).astype(np.int64)  # (B,) the first j with cdf[j] > u


# ---------------------------------------------------------------------------- the key/value cache


class GPTKVCache:
    """Run a :class:`GPT` a few positions at a time, keeping every layer's keys and values.

    ``feed(ids)`` appends ``ids`` (B, L) at positions ``length .. length + L - 1`` and returns
    their logits (B, L, V): the same numbers as ``model.forward`` on everything fed so far,
    restricted to the new positions. Feed the prompt once, then one token per step. Each layer
    keeps a :class:`~numpy_transformer.modules.kv_cache.KVCache` (the one the encoder–decoder's
    ``IncrementalDecoder`` uses) and runs through
    :func:`~numpy_transformer.modules.kv_cache.cached_encoder_layer`.

    Parameters
    ----------
    model : GPT
        In eval mode (``model.eval()``): the cache computes the forward without dropout.
    batch_size : int
    capacity : int, optional
        Most positions that will be fed, at most ``config.max_len`` (the default). The
        buffers are allocated once, at this size.
    """

    def __init__(self, model: GPT, batch_size: int, capacity: int | None = None) -> None:
        if not isinstance(model, GPT):
            raise TypeError(f"model: expected a numpy_transformer GPT, got {type(model).__name__}")
        if any(m.training for m in model.modules()):
            raise ValueError(
                "model: expected eval mode (call model.eval()); the cache computes the forward without dropout"
            )
        c = model.config
        self.model = model
        self.batch_size = check_int("batch_size", batch_size, 1, None)
        self.capacity = check_int("capacity", c.max_len if capacity is None else capacity, 1, c.max_len)
        self.layers = [KVCache.empty(layer.self_attn, self.batch_size, self.capacity) for layer in model.layers]
        self.tokens = np.zeros((self.batch_size, self.capacity), dtype=np.int64)  # (B, capacity), for the pad mask
        self.length = 0  # positions filled

    def feed(self, ids: np.ndarray) -> np.ndarray:
        """Append ``ids`` (B, L) and return their logits (B, L, V)."""
        model, t0 = self.model, self.length
        ids = model.check_ids(ids)
        if ids.shape[0] != self.batch_size:
            raise ValueError(f"ids: expected batch size {self.batch_size} (the cache's), got {ids.shape[0]}")
        L = ids.shape[1]
        if t0 + L > self.capacity:
            raise ValueError(
                f"ids: {L} more position(s) after {t0} exceed the cache's capacity {self.capacity} "
                f"(at most max_len={model.config.max_len})"
            )
        self.tokens[:, t0 : t0 + L] = ids
        self.length = t1 = t0 + L
        # The rows of GPT.forward's mask for the new queries t0 .. t1 - 1 over keys 0 .. t1 - 1.
        mask = np.tri(L, t1, k=t0, dtype=bool)  # (L, t1): query t0 + i sees keys s <= t0 + i
        if model.config.pad_id is not None:
            mask = (self.tokens[:, None, None, :t1] != model.config.pad_id) & mask  # (B, 1, L, t1)
        e, _ = model.tok_embed.forward(ids)  # (B, L, C)
        p, _ = model.pos_embed.forward(np.arange(t0, t1)[None, :])  # (1, L, C): positions continue
        x = e + p
        for i, layer in enumerate(model.layers):
            x, self.layers[i] = cached_encoder_layer(layer, x, self.layers[i], mask)  # (B, L, C)
        h, _ = model.norm.forward(x)
        logits, _ = linear_forward(h, model.tok_embed.weight)  # (B, L, V)
        return logits


# ---------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`generate` returns.

    Attributes
    ----------
    tokens : ndarray of int64, shape (B, P + N)
        The prompt, then the ``N`` generated tokens.
    logits : ndarray, shape (B, N, V), the model's dtype
        ``logits[:, i]``: the model's raw logits (before temperature and filtering) from which
        ``tokens[:, P + i]`` was drawn.
    """

    tokens: np.ndarray  # (B, P + N) int64
    logits: np.ndarray  # (B, N, V)


def generate(
    model: GPT | Llama,
    prompt_ids: np.ndarray,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
    use_cache: bool = True,
) -> GenerationResult:
    """Continue every row of ``prompt_ids`` by ``max_new_tokens`` tokens.

    Parameters
    ----------
    model : GPT or Llama
        Switched to eval mode for the call; every module's mode is restored afterwards.
    prompt_ids : ndarray of int, shape (B, P)
        ``1 <= P`` and ``P + max_new_tokens <= config.max_len`` (the position table ends there).
    max_new_tokens : int
        ``N >= 1``.
    temperature, top_k, top_p
        See the module docstring; ``temperature=0`` is greedy.
    rng : numpy.random.Generator, optional
        Draws one uniform number per row and step when sampling. ``None``: a fresh, unseeded
        generator (not reproducible). Unused when ``temperature=0``.
    use_cache : bool
        True: a :class:`GPTKVCache`, or a Llama's ``LlamaKVCache`` (``O(t)`` per step). False:
        ``model.forward`` on the whole sequence at every step (the reference). The same seed gives
        the same tokens either way.
    """
    if not isinstance(model, (GPT, Llama)):
        raise TypeError(f"model: expected a numpy_transformer GPT or Llama, got {type(model).__name__}")
    prompt_ids = model.check_ids(prompt_ids, "prompt_ids")
    B, P = prompt_ids.shape
    max_len = model.config.max_len
    N = check_int("max_new_tokens", max_new_tokens, 1, None)
    if max_len - P < N:
        raise ValueError(
            f"max_new_tokens: the prompt's {P} tokens + {N} new ones = {P + N} exceed max_len={max_len} "
            f"(at most {max_len - P} new tokens fit after this prompt)"
        )
    temperature, top_k, top_p = check_sampling_args(temperature, top_k, top_p)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")
    if not isinstance(use_cache, (bool, np.bool_)):
        raise TypeError(f"use_cache: expected a bool, got {type(use_cache).__name__}")
    if temperature > 0 and rng is None:
        rng = np.random.default_rng()

    tokens = np.zeros((B, P + N), dtype=np.int64)
    tokens[:, :P] = prompt_ids
    step_logits = []
    with model.eval_mode():
        kv_cache = LlamaKVCache if isinstance(model, Llama) else GPTKVCache  # each model's own
        cache = kv_cache(model, B, capacity=P + N - 1) if use_cache else None
        for t in range(P, P + N):  # choose tokens[:, t] from the t tokens before it
            if cache is None:
                logits = model.forward(tokens[:, :t])[0][:, -1]  # (B, V): everything recomputed
            elif t == P:
                logits = cache.feed(tokens[:, :P])[:, -1]  # the prompt in one pass
            else:
                logits = cache.feed(tokens[:, t - 1 : t])[:, -1]  # only the newest token
            step_logits.append(logits)
            if temperature == 0:
                tokens[:, t] = logits.argmax(axis=-1)
            else:
                tokens[:, t] = sample(sampling_distribution(logits, temperature, top_k, top_p), rng)
    return GenerationResult(tokens=tokens, logits=np.stack(step_logits, axis=1))
