"""Lab 03's answer key: the references that are not the solution's own functions, and the
catalogue of plausible mistakes, each with the hint that names it.

``sol`` is the solution notebook's namespace (``sol.patch_grid``...). The mistakes are short
wrong implementations, or the solution called the wrong way (noising is the solution with the
two runs swapped). They run only when an answer needs naming (and when ``labkit build``
records the notebook's own problems).
"""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.grading.answers import AnswerKey
from labkit.hooks import capture, patch

KEY = AnswerKey("03")


class NotThisProblem(ValueError):
    """A mistake that does not apply here (it would equal the right answer)."""


# ----- helpers: short wrong implementations ------------------------------------------------------
def _rows_diff(logits: Tensor, targets, foils) -> Tensor:
    rows = torch.arange(logits.shape[0])
    return logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(foils)]


def _last(lm, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        return lm.model(tokens).logits[:, -1]


def _acts(lm, tokens: Tensor, site: str) -> Tensor:
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(tokens)
    return cache.stack(site)


def _acts_grads(lm, tokens: Tensor, metric, site: str, position: int = -1, of=None):
    """Activations at ``site`` (every layer) and the gradient of ``of(logits)`` (default: the
    metric of the last position's logits) at each of them."""
    embeds = lm.embed(tokens).detach().requires_grad_(True)
    with torch.enable_grad(), capture(lm, site, keep_grad=True) as cache:
        logits = lm.model(inputs_embeds=embeds).logits
        value = metric(logits[:, position]) if of is None else of(logits)
        layers = [cache[site, layer] for layer in range(lm.n_layers)]
        grads = torch.autograd.grad(value, layers)
    return torch.stack(layers).detach(), torch.stack(grads)


def _loop_grid(lm, source: Tensor, target: Tensor, metric, site: str, cells) -> Tensor:
    """Exact patching, one forward pass per cell: cell (L, p) patches ``source``'s activation
    at the positions ``cells(p)`` of layer L into the run on ``target``."""
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(source)
    grid = torch.zeros(lm.n_layers, source.shape[1])
    for layer in range(lm.n_layers):
        for p in range(source.shape[1]):
            with torch.no_grad(), patch(lm, site, layer, cache[site, layer], positions=cells(p)):
                grid[layer, p] = metric(lm.model(target).logits[:, -1])
    return grid


def _loop_heads(
    lm,
    clean: Tensor,
    corrupted: Tensor,
    metric,
    *,
    heads=None,
    positions=None,
    site: str = "head_out",
) -> Tensor:
    """Exact patching per (layer, head): ``heads(h)`` are the heads patched for column h (at
    the head_out site), or, for the split-a-vector mistakes, chunk h of ``site``."""
    with torch.no_grad(), capture(lm, site) as cache:
        lm.model(clean)
    grid = torch.zeros(lm.n_layers, lm.n_heads)
    chunk = lm.d_model // lm.n_heads
    for layer in range(lm.n_layers):
        source = cache[site, layer]
        for h in range(lm.n_heads):
            if site == "head_out":
                context = patch(
                    lm, site, layer, source, positions=positions, heads=heads(h) if heads else [h]
                )
            else:

                def put(act, source=source, h=h):
                    act = act.clone()
                    act[..., h * chunk : (h + 1) * chunk] = source[..., h * chunk : (h + 1) * chunk]
                    return act

                context = patch(lm, site, layer, put)
            with torch.no_grad(), context:
                grid[layer, h] = metric(lm.model(corrupted).logits[:, -1])
    return grid


def _corrupted_metric(lm, corrupted: Tensor, metric) -> float:
    with torch.no_grad():
        return float(metric(lm.model(corrupted).logits[:, -1]))


# ----- 3.1 normalised_metric ---------------------------------------------------------------------
@KEY.reference("normalised_metric@coefficients")
def metric_coefficients(sol, lm, clean, corrupted, targets, foils):
    """The solution's metric is linear in the logits: its gradient and its value at 0."""
    metric = sol.normalised_metric(lm, clean, corrupted, targets, foils)
    logits = torch.zeros(clean.shape[0], lm.vocab_size, requires_grad=True)
    value = metric(logits)
    (weights,) = torch.autograd.grad(value, logits)
    return weights.detach(), float(value.detach())


@KEY.reference("normalised_metric@logits")
def metric_of_logits(sol, lm, clean, corrupted, targets, foils, logits):
    """The solution's metric of ``logits`` (batch, vocab)."""
    return sol.normalised_metric(lm, clean, corrupted, targets, foils)(logits).detach()


def _normalised(
    lm,
    clean,
    corrupted,
    targets,
    foils,
    logits,
    *,
    per_row=False,
    transform=None,
    diff=_rows_diff,
):
    """(diff(x) - diff(corrupted)) / (diff(clean) - diff(corrupted)), the wrong ways."""
    transform = transform or (lambda x: x)
    high = diff(transform(_last(lm, clean)), targets, foils)
    low = diff(transform(_last(lm, corrupted)), targets, foils)
    now = diff(transform(logits), targets, foils)
    if per_row:
        return ((now - low) / (high - low)).mean()
    return (now.mean() - low.mean()) / (high.mean() - low.mean())


@KEY.mistake(
    "normalised_metric@logits",
    "This is the raw mean logit difference. Normalise it: subtract the corrupted run's value "
    "and divide by (clean - corrupted).",
)
def metric_raw(sol, lm, clean, corrupted, targets, foils, logits):
    return _rows_diff(logits, targets, foils).mean()


@KEY.mistake(
    "normalised_metric@logits",
    "The metric is flipped: it must be 1 on the clean run and 0 on the corrupted one, "
    "(x - corrupted) / (clean - corrupted).",
)
def metric_flipped(sol, lm, clean, corrupted, targets, foils, logits):
    return 1 - metric_of_logits(sol, lm, clean, corrupted, targets, foils, logits)


@KEY.mistake(
    "normalised_metric@logits",
    "You normalised each prompt separately and then averaged. Average the logit differences "
    "over the batch first, then normalise once.",
)
def metric_per_prompt(sol, lm, clean, corrupted, targets, foils, logits):
    if clean.shape[0] == 1:
        raise NotThisProblem
    return _normalised(lm, clean, corrupted, targets, foils, logits, per_row=True)


@KEY.mistake(
    "normalised_metric@logits",
    "You used probabilities (softmax) instead of logits: the metric is a logit difference.",
)
def metric_probabilities(sol, lm, clean, corrupted, targets, foils, logits):
    return _normalised(
        lm, clean, corrupted, targets, foils, logits, transform=lambda x: x.softmax(-1)
    )


@KEY.mistake(
    "normalised_metric@logits",
    "Every row used the first prompt's target and foil. Row i has its own ids: target_ids[i] "
    "and foil_ids[i].",
)
def metric_first_ids(sol, lm, clean, corrupted, targets, foils, logits):
    batch = clean.shape[0]
    first_t, first_f = (
        [int(torch.as_tensor(targets)[0])] * batch,
        [int(torch.as_tensor(foils)[0])] * batch,
    )
    return _normalised(lm, clean, corrupted, first_t, first_f, logits)


@KEY.mistake(
    "normalised_metric@logits",
    "Your metric reads the first prompt only (row 0). The metric averages the logit "
    "differences of every row of the batch.",
)
def metric_first_row(sol, lm, clean, corrupted, targets, foils, logits):
    if clean.shape[0] == 1:
        raise NotThisProblem
    first = slice(0, 1)
    one = [int(torch.as_tensor(targets)[0])], [int(torch.as_tensor(foils)[0])]
    return sol.normalised_metric(lm, clean[first], corrupted[first], *one)(logits[first]).detach()


def _every_pair(logits, targets, foils):
    return logits[:, torch.as_tensor(targets)] - logits[:, torch.as_tensor(foils)]  # (b, b)


@KEY.mistake(
    "normalised_metric@logits",
    "logits[:, target_ids] reads every target in every row. Pick row i's own target: "
    "logits[torch.arange(batch), target_ids].",
)
def metric_every_pair(sol, lm, clean, corrupted, targets, foils, logits):
    if clean.shape[0] == 1:
        raise NotThisProblem
    return _normalised(lm, clean, corrupted, targets, foils, logits, diff=_every_pair)


@KEY.mistake(
    "normalised_metric@logits",
    "You divided by the clean value only. Subtract the corrupted baseline as well: "
    "(x - corrupted) / (clean - corrupted).",
)
def metric_clean_only(sol, lm, clean, corrupted, targets, foils, logits):
    high = _rows_diff(_last(lm, clean), targets, foils).mean()
    return _rows_diff(logits, targets, foils).mean() / high


@KEY.mistake(
    "normalised_metric@logits",
    "You used the largest logit of each row instead of its target's: read the target id you "
    "were given.",
)
def metric_argmax(sol, lm, clean, corrupted, targets, foils, logits):
    def diff(x, targets, foils):
        rows = torch.arange(x.shape[0])
        return x.max(-1).values - x[rows, torch.as_tensor(foils)]

    return _normalised(lm, clean, corrupted, targets, foils, logits, diff=diff)


# ----- 3.2 patch_grid ----------------------------------------------------------------------------
@KEY.mistake(
    "patch_grid",
    "This is the noising direction (corrupted activations patched into the clean run). "
    "Patch the clean activation into the corrupted run.",
)
def grid_noising(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return sol.patch_grid(lm, corrupted, clean, metric, site)


@KEY.mistake(
    "patch_grid",
    "This is resid_post (a block's output). resid_pre[layer] is the block's input.",
)
def grid_resid_post(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if site != "resid_pre":
        raise NotThisProblem
    return sol.patch_grid(lm, clean, corrupted, metric, "resid_post")


@KEY.mistake(
    "patch_grid",
    "This is the resid_pre grid, whatever the site: patch the site you are given.",
)
def grid_always_resid_pre(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if site == "resid_pre":
        raise NotThisProblem
    return sol.patch_grid(lm, clean, corrupted, metric, "resid_pre")


@KEY.mistake(
    "patch_grid",
    "You patched the other block output: attn_out is what the attention adds, mlp_out what "
    "the MLP adds.",
)
def grid_other_output(sol, lm, clean, corrupted, metric, site="resid_pre"):
    other = {"attn_out": "mlp_out", "mlp_out": "attn_out"}.get(site)
    if other is None:
        raise NotThisProblem
    return sol.patch_grid(lm, clean, corrupted, metric, other)


@KEY.mistake(
    "patch_grid",
    "Cell (L, p) patched every position up to p. Patch position p only.",
)
def grid_leaks_backward(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _loop_grid(lm, clean, corrupted, metric, site, lambda p: list(range(p + 1)))


@KEY.mistake(
    "patch_grid",
    "Cell (L, p) patched position p and every position after it. Patch position p only "
    "(inside a hook that runs from position p, that is index 0 of the position axis).",
)
def grid_leaks_forward(sol, lm, clean, corrupted, metric, site="resid_pre"):
    n_pos = clean.shape[1]
    return _loop_grid(lm, clean, corrupted, metric, site, lambda p: list(range(p, n_pos)))


@KEY.mistake(
    "patch_grid",
    "Every cell of a layer has the same value: you patched every position at once. Cell "
    "(L, p) patches position p only.",
)
def grid_all_positions(sol, lm, clean, corrupted, metric, site="resid_pre"):
    n_pos = clean.shape[1]
    return _loop_grid(lm, clean, corrupted, metric, site, lambda p: list(range(n_pos)))


@KEY.mistake(
    "patch_grid",
    "Only the first prompt of the batch was patched. Patch the clean activation into every "
    "prompt of the batch (the metric averages over them).",
)
def grid_first_prompt(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if clean.shape[0] == 1:
        raise NotThisProblem
    mixed = corrupted.clone()
    mixed[0] = clean[0]
    return sol.patch_grid(lm, mixed, corrupted, metric, site)


@KEY.mistake(
    "patch_grid",
    "The rows are shifted by one layer: row L must patch layer L (layers count from 0).",
)
def grid_shifted_layer(sol, lm, clean, corrupted, metric, site="resid_pre"):
    grid = sol.patch_grid(lm, clean, corrupted, metric, site)
    return torch.cat([grid[1:], grid[-1:]])


@KEY.mistake(
    "patch_grid",
    "The rows are shifted by one layer: row L must patch layer L (layers count from 0).",
)
def grid_shifted_layer_down(sol, lm, clean, corrupted, metric, site="resid_pre"):
    grid = sol.patch_grid(lm, clean, corrupted, metric, site)
    return torch.cat([grid[:1], grid[:-1]])


@KEY.mistake(
    "patch_grid",
    "A cell is the metric of the patched run itself, not its change from the corrupted run's "
    "metric: do not subtract the corrupted run's value.",
)
def grid_change(sol, lm, clean, corrupted, metric, site="resid_pre"):
    grid = sol.patch_grid(lm, clean, corrupted, metric, site)
    return grid - _corrupted_metric(lm, corrupted, metric)


# ----- 3.3 patch_heads ---------------------------------------------------------------------------
@KEY.mistake(
    "patch_heads",
    "You split the residual stream (the attention's input) into chunks. A head's output is its "
    "slice of the input of the attention output projection (site 'head_out').",
)
def heads_resid_split(sol, lm, clean, corrupted, metric):
    return _loop_heads(lm, clean, corrupted, metric, site="resid_pre")


@KEY.mistake(
    "patch_heads",
    "You split the attention output (after W_O has mixed the heads) into chunks. Use the input "
    "of W_O (site 'head_out').",
)
def heads_attn_out_split(sol, lm, clean, corrupted, metric):
    return _loop_heads(lm, clean, corrupted, metric, site="attn_out")


@KEY.mistake(
    "patch_heads",
    "You patched each head at the last position only. Patch its clean output at every position.",
)
def heads_last_position(sol, lm, clean, corrupted, metric):
    return _loop_heads(lm, clean, corrupted, metric, positions=[clean.shape[1] - 1])


@KEY.mistake(
    "patch_heads",
    "You patched each head only where the prompts differ. A head's output changes at later "
    "positions too (attention moves information): patch every position.",
)
def heads_changed_positions(sol, lm, clean, corrupted, metric):
    changed = (clean != corrupted).any(0).nonzero().flatten().tolist()
    return _loop_heads(lm, clean, corrupted, metric, positions=changed)


@KEY.mistake(
    "patch_heads",
    "This is the noising direction (corrupted head outputs patched into the clean run). Patch "
    "the clean output into the corrupted run.",
)
def heads_noising(sol, lm, clean, corrupted, metric):
    return sol.patch_heads(lm, corrupted, clean, metric)


@KEY.mistake(
    "patch_heads",
    "You patched every query head that shares a key/value head at once. Each query head has "
    "its own output: patch one at a time.",
)
def heads_kv_group(sol, lm, clean, corrupted, metric):
    kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
    if kv == lm.n_heads:
        raise NotThisProblem
    size = lm.n_heads // kv
    return _loop_heads(
        lm,
        clean,
        corrupted,
        metric,
        heads=lambda h: list(range(h // size * size, (h // size + 1) * size)),
    )


@KEY.mistake(
    "patch_heads",
    "The heads of each layer are in reverse order: column h must patch head h.",
)
def heads_reversed(sol, lm, clean, corrupted, metric):
    return sol.patch_heads(lm, clean, corrupted, metric).flip(1)


@KEY.mistake(
    "patch_heads",
    "A cell is the metric of the patched run itself, not its change from the corrupted run's "
    "metric: do not subtract the corrupted run's value.",
)
def heads_change(sol, lm, clean, corrupted, metric):
    grid = sol.patch_heads(lm, clean, corrupted, metric)
    return grid - _corrupted_metric(lm, corrupted, metric)


# ----- 3.4 activations_and_grads -----------------------------------------------------------------
@KEY.mistake(
    "activations_and_grads",
    "The gradients have the wrong sign: take the gradient of the metric itself.",
)
def grads_negated(sol, lm, tokens, metric, site):
    acts, grads = sol.activations_and_grads(lm, tokens, metric, site)
    return acts, -grads


@KEY.mistake(
    "activations_and_grads",
    "The gradients are twice what they should be: they piled up in .grad over two backward "
    "passes or calls. Use torch.autograd.grad (it leaves .grad alone), or fresh tensors each "
    "call.",
)
def grads_doubled(sol, lm, tokens, metric, site):
    acts, grads = sol.activations_and_grads(lm, tokens, metric, site)
    return acts, 2 * grads


@KEY.mistake(
    "activations_and_grads",
    "The gradients are three times what they should be: they piled up in .grad over calls. "
    "Use torch.autograd.grad (it leaves .grad alone), or fresh tensors each call.",
)
def grads_tripled(sol, lm, tokens, metric, site):
    acts, grads = sol.activations_and_grads(lm, tokens, metric, site)
    return acts, 3 * grads


@KEY.mistake(
    "activations_and_grads",
    "These are gradients of the logits' sum, not of the metric: differentiate "
    "metric(last position's logits).",
)
def grads_of_logits(sol, lm, tokens, metric, site):
    return _acts_grads(lm, tokens, metric, site, of=lambda logits: logits[:, -1].sum())


@KEY.mistake(
    "activations_and_grads",
    "The metric read the first position's logits. It reads the last position: logits[:, -1].",
)
def grads_first_position(sol, lm, tokens, metric, site):
    return _acts_grads(lm, tokens, metric, site, position=0)


@KEY.mistake(
    "activations_and_grads",
    "These are resid_post (a block's output). resid_pre[layer] is the block's input.",
)
def grads_resid_post(sol, lm, tokens, metric, site):
    if site != "resid_pre":
        raise NotThisProblem
    return sol.activations_and_grads(lm, tokens, metric, "resid_post")


@KEY.mistake(
    "activations_and_grads",
    "These are the residual stream's (resid_pre), whatever the site: capture the site you "
    "are given.",
)
def grads_always_resid_pre(sol, lm, tokens, metric, site):
    if site in ("resid_pre", "head_out"):
        raise NotThisProblem
    return sol.activations_and_grads(lm, tokens, metric, "resid_pre")


@KEY.mistake(
    "activations_and_grads",
    "Each prompt's gradient is the sum over the batch. The metric's gradient at row i is that "
    "row's own: no sum over the batch.",
)
def grads_batch_sum(sol, lm, tokens, metric, site):
    if tokens.shape[0] == 1:
        raise NotThisProblem
    acts, grads = sol.activations_and_grads(lm, tokens, metric, site)
    return acts, grads.sum(1, keepdim=True).expand_as(grads).clone()


# ----- 3.5 attribution_patching ------------------------------------------------------------------
def _estimate(
    lm, clean, corrupted, metric, site, *, grad_at="corrupted", sign=1.0, delta="difference"
) -> Tensor:
    """Attribution patching and its wrong versions, (n_layers, pos) (head_out: (L, H, pos))."""
    clean_acts = _acts(lm, clean, site)
    corrupted_acts, grads = _acts_grads(lm, corrupted, metric, site)
    if grad_at == "clean":
        grads = _acts_grads(lm, clean, metric, site)[1]
    step = {
        "difference": clean_acts - corrupted_acts,
        "gradient": torch.ones_like(grads),
        "input": corrupted_acts,
    }[delta]
    per = (sign * step * grads).sum(-1).sum(1)
    return per.transpose(1, 2) if site == "head_out" else per


@KEY.mistake(
    "attribution_patching",
    "The sign is flipped: the estimate is (clean - corrupted) . gradient.",
)
def attr_sign(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return -sol.attribution_patching(lm, clean, corrupted, metric, site)


@KEY.mistake(
    "attribution_patching",
    "The gradient was taken at the clean run. A clean-into-corrupted patch is linearised "
    "around the corrupted run: take the gradient there.",
)
def attr_grad_at_clean(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _estimate(lm, clean, corrupted, metric, site, grad_at="clean")


@KEY.mistake(
    "attribution_patching",
    "That is the noising estimate ((corrupted - clean) . gradient at the clean run); this "
    "exercise asks for denoising.",
)
def attr_noising(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _estimate(lm, clean, corrupted, metric, site, grad_at="clean", sign=-1.0)


@KEY.mistake(
    "attribution_patching",
    "That is the gradient alone, summed. Multiply it by the change of the activation, "
    "clean - corrupted, before summing over d_model.",
)
def attr_gradient_only(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _estimate(lm, clean, corrupted, metric, site, delta="gradient")


@KEY.mistake(
    "attribution_patching",
    "That is activation x gradient of the corrupted run. Multiply the gradient by the "
    "difference clean - corrupted.",
)
def attr_input_x_gradient(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return _estimate(lm, clean, corrupted, metric, site, delta="input")


@KEY.mistake(
    "attribution_patching",
    "You averaged over the batch. The metric already averages over the prompts, so the "
    "estimates add up over the batch: sum.",
)
def attr_batch_mean(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if clean.shape[0] == 1:
        raise NotThisProblem
    return sol.attribution_patching(lm, clean, corrupted, metric, site) / clean.shape[0]


@KEY.mistake(
    "attribution_patching",
    "This is the resid_pre estimate, whatever the site: use the site you are given.",
)
def attr_always_resid_pre(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if site == "resid_pre":
        raise NotThisProblem
    return sol.attribution_patching(lm, clean, corrupted, metric, "resid_pre")


@KEY.mistake(
    "attribution_patching",
    "This is resid_post (a block's output). resid_pre[layer] is the block's input.",
)
def attr_resid_post(sol, lm, clean, corrupted, metric, site="resid_pre"):
    if site != "resid_pre":
        raise NotThisProblem
    return sol.attribution_patching(lm, clean, corrupted, metric, "resid_post")


@KEY.mistake(
    "attribution_patching",
    "The estimate is twice what it should be: the gradients piled up in .grad over two "
    "backward passes or calls. Use torch.autograd.grad, or fresh tensors each call.",
)
def attr_doubled(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return 2 * sol.attribution_patching(lm, clean, corrupted, metric, site)


@KEY.mistake(
    "attribution_patching",
    "These are absolute values; the estimate keeps its sign.",
)
def attr_abs(sol, lm, clean, corrupted, metric, site="resid_pre"):
    return sol.attribution_patching(lm, clean, corrupted, metric, site).abs()


# ----- 3.6 head_attribution ----------------------------------------------------------------------
def _split_estimate(lm, clean, corrupted, metric, site: str) -> Tensor:
    """The estimate of a vector site cut into n_heads chunks: (L, H, pos)."""
    clean_acts = _acts(lm, clean, site)
    corrupted_acts, grads = _acts_grads(lm, corrupted, metric, site)
    per = ((clean_acts - corrupted_acts) * grads).sum(1)  # (L, pos, d_model)
    per = per.view(lm.n_layers, clean.shape[1], lm.n_heads, -1).sum(-1)
    return per.transpose(1, 2)


@KEY.mistake(
    "head_attribution",
    "You split the residual stream (the attention's input) into heads. A head's output is the "
    "input of the attention output projection (site 'head_out').",
)
def head_attr_resid(sol, lm, clean, corrupted, metric):
    return _split_estimate(lm, clean, corrupted, metric, "resid_pre")


@KEY.mistake(
    "head_attribution",
    "You split the attention output (after W_O mixes the heads) into chunks. Use the input of "
    "W_O (site 'head_out').",
)
def head_attr_attn_out(sol, lm, clean, corrupted, metric):
    return _split_estimate(lm, clean, corrupted, metric, "attn_out")


@KEY.mistake("head_attribution", "The sign is flipped: (clean - corrupted) . gradient.")
def head_attr_sign(sol, lm, clean, corrupted, metric):
    return -sol.head_attribution(lm, clean, corrupted, metric)


@KEY.mistake(
    "head_attribution",
    "The gradient was taken at the clean run; take it at the corrupted run.",
)
def head_attr_grad_at_clean(sol, lm, clean, corrupted, metric):
    return _estimate(lm, clean, corrupted, metric, "head_out", grad_at="clean")


@KEY.mistake(
    "head_attribution",
    "Heads and positions are mixed up: a reshape is not a transpose. Sum over d_head and the "
    "batch, then swap the position and head axes with .transpose (or .permute).",
)
def head_attr_reshaped(sol, lm, clean, corrupted, metric):
    per = sol.head_attribution(lm, clean, corrupted, metric)  # (L, H, pos)
    if per.shape[1] == per.shape[2]:
        raise NotThisProblem
    return per.transpose(1, 2).reshape(per.shape)


@KEY.mistake(
    "head_attribution",
    "That is activation x gradient of the corrupted run. Multiply the gradient by the "
    "difference clean - corrupted.",
)
def head_attr_input_x_gradient(sol, lm, clean, corrupted, metric):
    return _estimate(lm, clean, corrupted, metric, "head_out", delta="input")


@KEY.mistake(
    "head_attribution",
    "The estimate is twice what it should be: the gradients piled up in .grad over two "
    "backward passes or calls. Use torch.autograd.grad, or fresh tensors each call.",
)
def head_attr_doubled(sol, lm, clean, corrupted, metric):
    return 2 * sol.head_attribution(lm, clean, corrupted, metric)


# ----- 3.7 agreement -----------------------------------------------------------------------------
def _flat(estimate, exact) -> tuple[Tensor, Tensor]:
    return exact.flatten().double(), estimate.flatten().double()


def _corr(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _topk_recall(x: Tensor, y: Tensor, k: int, signed_x=False, signed_y=False) -> float:
    top_x = set((x if signed_x else x.abs()).topk(k).indices.tolist())
    top_y = set((y if signed_y else y.abs()).topk(k).indices.tolist())
    return len(top_x & top_y) / k


def _agreement_with(sol, estimate, exact, k, **changes) -> dict:
    out = dict(sol.agreement(estimate, exact, k))
    x, y = _flat(estimate, exact)
    for key, value in changes.items():
        out[key] = value(x, y)
    return out


_BY_SIZE = (
    "Rank by size (absolute value) on both sides: a large negative effect is a top effect too."
)


@KEY.mistake(
    "agreement",
    "You regressed exact on the estimate. The slope is of the estimate (y) against exact "
    "patching (x): cov(x, y) / var(x).",
)
def agreement_slope_swapped(sol, estimate, exact, k=10):
    def slope(x, y):
        yc = y - y.mean()
        return float((yc * (x - x.mean())).sum() / (yc * yc).sum())

    return _agreement_with(sol, estimate, exact, k, slope=slope)


@KEY.mistake(
    "agreement",
    "That is the slope of a line through the origin. Fit the least-squares line with an "
    "intercept: cov(x, y) / var(x).",
)
def agreement_slope_origin(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, slope=lambda x, y: float((x * y).sum() / (x * x).sum())
    )


@KEY.mistake(
    "agreement",
    "That is Pearson's r of the values. Spearman's rho is Pearson's r of the ranks.",
)
def agreement_spearman_values(sol, estimate, exact, k=10):
    return _agreement_with(sol, estimate, exact, k, spearman=_corr)


@KEY.mistake(
    "agreement",
    "That is Spearman's rho of the absolute values. Rank the signed values.",
)
def agreement_spearman_abs(sol, estimate, exact, k=10):
    def rho(x, y):
        return _corr(x.abs().argsort().argsort().double(), y.abs().argsort().argsort().double())

    return _agreement_with(sol, estimate, exact, k, spearman=rho)


@KEY.mistake(
    "agreement",
    "That is the cosine similarity: Pearson's r subtracts each tensor's mean first.",
)
def agreement_cosine(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, pearson=lambda x, y: float((x * y).sum() / (x.norm() * y.norm()))
    )


@KEY.mistake("agreement", _BY_SIZE)
def agreement_signed_topk(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, **{"top-k recall": lambda x, y: _topk_recall(x, y, k, True, True)}
    )


@KEY.mistake("agreement", _BY_SIZE)
def agreement_signed_topk_exact(sol, estimate, exact, k=10):
    return _agreement_with(
        sol,
        estimate,
        exact,
        k,
        **{"top-k recall": lambda x, y: _topk_recall(x, y, k, signed_x=True)},
    )


@KEY.mistake("agreement", _BY_SIZE)
def agreement_signed_topk_estimate(sol, estimate, exact, k=10):
    return _agreement_with(
        sol,
        estimate,
        exact,
        k,
        **{"top-k recall": lambda x, y: _topk_recall(x, y, k, signed_y=True)},
    )


@KEY.mistake("agreement", "Return top-k recall as a fraction of k (0 to 1), not a count.")
def agreement_recall_count(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, **{"top-k recall": lambda x, y: k * _topk_recall(x, y, k)}
    )


@KEY.mistake(
    "agreement",
    "Top-k recall used k = 10 whatever k you were given: use the argument k.",
)
def agreement_recall_k10(sol, estimate, exact, k=10):
    if k == 10 or exact.numel() < 10:
        raise NotThisProblem
    return _agreement_with(
        sol, estimate, exact, k, **{"top-k recall": lambda x, y: _topk_recall(x, y, 10)}
    )


@KEY.mistake("agreement", "Return sign agreement as a fraction (0 to 1), not a count.")
def agreement_sign_count(sol, estimate, exact, k=10):
    return _agreement_with(
        sol,
        estimate,
        exact,
        k,
        **{"sign agreement": lambda x, y: float((x.sign() == y.sign()).sum())},
    )


@KEY.mistake(
    "agreement",
    "Sign agreement is the fraction of components whose estimate and exact effect have the "
    "same sign, not the fraction of positive estimates.",
)
def agreement_sign_positive(sol, estimate, exact, k=10):
    return _agreement_with(
        sol, estimate, exact, k, **{"sign agreement": lambda x, y: float((y > 0).double().mean())}
    )


# ----- 3.8 patches_to_find_top_k -----------------------------------------------------------------
def _needed(
    estimate, exact, k, *, signed_exact=False, signed_estimate=False, ascending=False, last=True
) -> int:
    x, y = exact.flatten(), estimate.flatten()
    top = (x if signed_exact else x.abs()).topk(k).indices
    key = y if signed_estimate else y.abs()
    rank = key.argsort(descending=not ascending).argsort()
    found = rank[top]
    return int(found.max() if last else found.min()) + 1


@KEY.mistake("patches_to_find_top_k", "Off by one: count the patches, starting at 1.")
def find_off_by_one(sol, estimate, exact, k=10):
    return sol.patches_to_find_top_k(estimate, exact, k) - 1


@KEY.mistake(
    "patches_to_find_top_k",
    "Patch in order of |estimate| (its absolute value), not of the signed estimate.",
)
def find_signed_estimate(sol, estimate, exact, k=10):
    return _needed(estimate, exact, k, signed_estimate=True)


@KEY.mistake(
    "patches_to_find_top_k",
    "The exact top-k are the largest effects by absolute value: a large negative effect "
    "counts too.",
)
def find_signed_exact(sol, estimate, exact, k=10):
    return _needed(estimate, exact, k, signed_exact=True)


@KEY.mistake(
    "patches_to_find_top_k",
    "You patched in increasing order of |estimate|. Patch the largest estimates first.",
)
def find_ascending(sol, estimate, exact, k=10):
    return _needed(estimate, exact, k, ascending=True)


@KEY.mistake(
    "patches_to_find_top_k",
    "You stopped at the first exact top-k component found. Go on until all k are found.",
)
def find_first(sol, estimate, exact, k=10):
    return _needed(estimate, exact, k, last=False)


@KEY.mistake(
    "patches_to_find_top_k",
    "That is the overlap of the two top-k sets. Count the patches made, in order of "
    "|estimate|, until every exact top-k component is among them.",
)
def find_overlap(sol, estimate, exact, k=10):
    x, y = exact.flatten().abs(), estimate.flatten().abs()
    return len(set(x.topk(k).indices.tolist()) & set(y.topk(k).indices.tolist()))


# ----- 3.9 qk_fix --------------------------------------------------------------------------------
@KEY.mistake(
    "qk_fix",
    "That is the plain linear estimate through the softmax (gradient w.r.t. the scores times "
    "the change in scores). The fix recomputes the pattern exactly: softmax(clean scores) - "
    "softmax(corrupted scores).",
)
def qk_plain(sol, scores_clean, scores_corrupted, pattern_grad):
    pattern = scores_corrupted.softmax(-1)
    score_grad = pattern * (pattern_grad - (pattern * pattern_grad).sum(-1, keepdim=True))
    delta = (scores_clean - scores_corrupted).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    return (score_grad * delta).sum((-2, -1))


@KEY.mistake("qk_fix", "The sign is flipped: the new pattern minus the corrupted pattern.")
def qk_sign(sol, scores_clean, scores_corrupted, pattern_grad):
    return -sol.qk_fix(scores_clean, scores_corrupted, pattern_grad)


@KEY.mistake("qk_fix", "Softmax over the keys (the last dimension), not over the queries.")
def qk_queries(sol, scores_clean, scores_corrupted, pattern_grad):
    new = scores_clean.softmax(-2) - scores_corrupted.softmax(-2)
    return (new.nan_to_num(0.0) * pattern_grad).sum((-2, -1))


@KEY.mistake("qk_fix", "Subtract the corrupted pattern: softmax(new) - softmax(old).")
def qk_no_subtraction(sol, scores_clean, scores_corrupted, pattern_grad):
    return (scores_clean.softmax(-1) * pattern_grad).sum((-2, -1))


@KEY.mistake(
    "qk_fix",
    "That is the change of the scores times the gradient. Take the softmax of each first: the "
    "fix compares attention patterns.",
)
def qk_raw_scores(sol, scores_clean, scores_corrupted, pattern_grad):
    delta = (scores_clean - scores_corrupted).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    return (delta * pattern_grad).sum((-2, -1))


@KEY.mistake(
    "qk_fix",
    "Masked scores are -inf, so that the softmax gives them 0. Replacing -inf by 0 before the "
    "softmax lets a query attend to future keys.",
)
def qk_unmasked(sol, scores_clean, scores_corrupted, pattern_grad):
    clean = scores_clean.nan_to_num(0.0, posinf=0.0, neginf=0.0)
    corrupted = scores_corrupted.nan_to_num(0.0, posinf=0.0, neginf=0.0)
    return sol.qk_fix(clean, corrupted, pattern_grad)


# ----- 3.10 integrated_patching ------------------------------------------------------------------
def _integrated(
    lm,
    clean,
    corrupted,
    metric,
    n_steps: int,
    offset: float = 0.5,
    baseline: str = "corrupted",
    spacing: int | None = None,
) -> Tensor:
    with torch.no_grad():
        x = lm.embed(clean)
        b = lm.embed(corrupted) if baseline == "corrupted" else torch.zeros_like(x)
    total = torch.zeros_like(x)
    for step in range(n_steps):
        alpha = (step + offset) / (spacing or n_steps)
        point = (b + alpha * (x - b)).requires_grad_(True)
        with torch.enable_grad():
            value = metric(lm.model(inputs_embeds=point).logits[:, -1])
            total += torch.autograd.grad(value, point)[0]
    return ((x - b) * total / n_steps).sum(-1).sum(0)


_MIDPOINT = "use the midpoint rule, alpha_k = (k + 1/2) / n_steps for k = 0 .. n_steps - 1."


@KEY.mistake("integrated_patching", "Left Riemann sum (alpha_k = k / n_steps): " + _MIDPOINT)
def ig_left(sol, lm, clean, corrupted, metric, n_steps=16):
    return _integrated(lm, clean, corrupted, metric, n_steps, offset=0.0)


@KEY.mistake("integrated_patching", "Right Riemann sum (alpha_k = (k + 1) / n_steps): " + _MIDPOINT)
def ig_right(sol, lm, clean, corrupted, metric, n_steps=16):
    return _integrated(lm, clean, corrupted, metric, n_steps, offset=1.0)


@KEY.mistake(
    "integrated_patching",
    "Your steps include both ends (alpha from 0 to 1, like torch.linspace(0, 1, n_steps)): "
    + _MIDPOINT,
)
def ig_linspace(sol, lm, clean, corrupted, metric, n_steps=16):
    if n_steps < 2:
        raise NotThisProblem
    return _integrated(lm, clean, corrupted, metric, n_steps, offset=0.0, spacing=n_steps - 1)


@KEY.mistake(
    "integrated_patching",
    "The sign is flipped: (clean - corrupted) times the average gradient.",
)
def ig_sign(sol, lm, clean, corrupted, metric, n_steps=16):
    return -sol.integrated_patching(lm, clean, corrupted, metric, n_steps)


@KEY.mistake(
    "integrated_patching",
    "That is integrated gradients from a zero baseline. Integrate from the corrupted "
    "embeddings to the clean ones.",
)
def ig_zero_baseline(sol, lm, clean, corrupted, metric, n_steps=16):
    return _integrated(lm, clean, corrupted, metric, n_steps, baseline="zero")


@KEY.mistake(
    "integrated_patching",
    "You summed the gradients over the steps. Average them (divide by n_steps).",
)
def ig_summed(sol, lm, clean, corrupted, metric, n_steps=16):
    if n_steps == 1:
        raise NotThisProblem
    return n_steps * sol.integrated_patching(lm, clean, corrupted, metric, n_steps)


@KEY.mistake(
    "integrated_patching",
    "That is attribution patching at the embeddings: one gradient, at the corrupted run. "
    "Integrated patching averages the gradients along the path.",
)
def ig_tangent(sol, lm, clean, corrupted, metric, n_steps=16):
    return _integrated(lm, clean, corrupted, metric, 1, offset=0.0)


@KEY.mistake(
    "integrated_patching",
    "Your result does not depend on n_steps: it used 16 steps whatever n_steps was. Use the "
    "argument.",
)
def ig_fixed_steps(sol, lm, clean, corrupted, metric, n_steps=16):
    if n_steps == 16:
        raise NotThisProblem
    return sol.integrated_patching(lm, clean, corrupted, metric, 16)


# ===== Parts 7-11: from components to a mechanism ================================================
def _ids(lm, ids) -> Tensor:
    return torch.as_tensor(ids, device=lm.device).long()


def _head_vectors(lm, z: Tensor, layer: int, *, bias: bool = False) -> Tensor:
    """Each head's output through its own slice of W_O: (..., n_heads, d_head) -> (...,
    n_heads, d_model); with ``bias``, W_O's bias added to every head (a mistake)."""
    n_heads, d_head = lm.n_heads, lm.d_head
    alone = torch.zeros(*z.shape[:-2], n_heads, n_heads, d_head, dtype=z.dtype)
    alone[..., range(n_heads), range(n_heads), :] = z
    alone = alone.flatten(-2)
    proj = lm.attn_out_proj(layer)
    return proj(alone) if bias else proj(alone) - proj(torch.zeros_like(alone))


def _chunks(x: Tensor, n_heads: int) -> Tensor:
    """(..., d_model) cut into n_heads chunks: (..., n_heads, d_model) with zeros elsewhere."""
    size = x.shape[-1] // n_heads
    out = torch.zeros(*x.shape[:-1], n_heads, x.shape[-1], dtype=x.dtype)
    for h in range(n_heads):
        out[..., h, h * size : (h + 1) * size] = x[..., h * size : (h + 1) * size]
    return out


def _run_cache(lm, tokens: Tensor, sites) -> object:
    with torch.no_grad(), capture(lm, sites) as cache:
        lm.model.base_model(tokens)
    return cache


def _final_scale(lm, final: Tensor) -> Tensor:
    norm = lm.final_norm
    if isinstance(norm, torch.nn.LayerNorm):
        return (final.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return (final.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()


def _is_layer_norm(lm) -> bool:
    return isinstance(lm.final_norm, torch.nn.LayerNorm)


def _dla(
    lm,
    tokens,
    targets,
    foils,
    site="head_out",
    *,
    norm="frozen",
    heads="head_out",
    bias=False,
    position=-1,
    reduce="mean",
    sign=1.0,
) -> Tensor:
    """Direct logit attribution and its wrong versions. ``norm``: "frozen" (right), "none",
    "recomputed" (the final norm applied to each component), "no_weight", "no_centre",
    "gradient" (the gradient through the norm, scale derivative included); ``heads``:
    "head_out" (right), "attn_out" or "resid_pre" (a d_model vector cut into chunks)."""
    targets, foils = _ids(lm, targets), _ids(lm, foils)
    last = lm.n_layers - 1
    cache = _run_cache(lm, tokens, ["head_out", "attn_out", "mlp_out", "resid_pre", "resid_post"])
    final = cache["resid_post", last][:, position]  # (batch, d_model)
    unembed = lm.unembed.weight
    raw = unembed[targets] - unembed[foils]  # (batch, d_model)
    if site == "head_out":
        if heads == "head_out":
            parts = [_head_vectors(lm, cache["head_out", L][:, position], L, bias=bias)
                     for L in range(lm.n_layers)]  # fmt: skip
        else:
            parts = [_chunks(cache[heads, L][:, position], lm.n_heads) for L in range(lm.n_layers)]
        vectors = torch.stack(parts)  # (L, batch, H, d)
    else:
        vectors = cache.stack(site)[:, :, position]  # (L, batch, d)
    with torch.no_grad():
        if norm == "none":
            values = (vectors * (raw if site != "head_out" else raw[:, None])).sum(-1)
        elif norm == "recomputed":
            logits_dir = raw if site != "head_out" else raw[:, None]
            values = (lm.final_norm(vectors) * logits_dir).sum(-1)
        elif norm == "gradient":
            x = final.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                value = (lm.final_norm(x) * raw).sum()
                (grad,) = torch.autograd.grad(value, x)
            values = (vectors * (grad if site != "head_out" else grad[:, None])).sum(-1)
        else:
            direction = raw if norm == "no_weight" else lm.final_norm.weight * raw
            if _is_layer_norm(lm) and norm != "no_centre":
                direction = direction - direction.mean(-1, keepdim=True)
            direction = direction / _final_scale(lm, final)
            values = (vectors * (direction if site != "head_out" else direction[:, None])).sum(-1)
    values = sign * values  # (L, batch) or (L, batch, H)
    return (values.sum(1) if reduce == "sum" else values.mean(1)).detach()


# ----- 3.11 direct_logit_attribution -------------------------------------------------------------
@KEY.mistake(
    "direct_logit_attribution",
    "This is the component times the unembedding with no final norm. The model reads the "
    "residual stream through the final norm: multiply by its weight and divide by the scale "
    "it computed on this run's final residual stream.",
)
def dla_no_norm(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, norm="none")


@KEY.mistake(
    "direct_logit_attribution",
    "You applied the final norm to each component on its own, so its scale was recomputed "
    "from that component. Freeze the scale at the run's final residual stream: then the "
    "components add up to the logit difference.",
)
def dla_norm_recomputed(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, norm="recomputed")


@KEY.mistake(
    "direct_logit_attribution",
    "You divided by the norm's scale but left out its weight: the final norm multiplies by "
    "its weight (one number per dimension) too.",
)
def dla_no_weight(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, norm="no_weight")


@KEY.mistake(
    "direct_logit_attribution",
    "This model's final norm is a LayerNorm: it subtracts each vector's mean before it "
    "scales. Centre the component too (or, equivalently, the direction).",
)
def dla_no_centre(sol, lm, tokens, targets, foils, site="head_out"):
    if not _is_layer_norm(lm):
        raise NotThisProblem
    return _dla(lm, tokens, targets, foils, site, norm="no_centre")


@KEY.mistake(
    "direct_logit_attribution",
    "That is the component times the gradient of the logit difference: the gradient includes "
    "how the norm's scale would change. Direct logit attribution freezes the scale.",
)
def dla_gradient(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, norm="gradient")


@KEY.mistake(
    "direct_logit_attribution",
    "You cut the attention output (after W_O mixed the heads) into chunks. A head's output is "
    "its slice of the input of W_O, multiplied by its own slice of W_O.",
)
def dla_attn_out_chunks(sol, lm, tokens, targets, foils, site="head_out"):
    if site != "head_out":
        raise NotThisProblem
    return _dla(lm, tokens, targets, foils, site, heads="attn_out")


@KEY.mistake(
    "direct_logit_attribution",
    "You cut the residual stream into chunks. A head's output is its slice of the input of "
    "W_O (site 'head_out'), multiplied by its own slice of W_O.",
)
def dla_resid_chunks(sol, lm, tokens, targets, foils, site="head_out"):
    if site != "head_out":
        raise NotThisProblem
    return _dla(lm, tokens, targets, foils, site, heads="resid_pre")


@KEY.mistake(
    "direct_logit_attribution",
    "Each head got W_O's bias added: the bias belongs to no head. Subtract it (apply W_O to "
    "zeros and take that away).",
)
def dla_bias_per_head(sol, lm, tokens, targets, foils, site="head_out"):
    if site != "head_out" or getattr(lm.attn_out_proj(0), "bias", None) is None:
        raise NotThisProblem
    return _dla(lm, tokens, targets, foils, site, bias=True)


@KEY.mistake(
    "direct_logit_attribution",
    "The sign is flipped: the logit difference is target minus foil.",
)
def dla_sign(sol, lm, tokens, targets, foils, site="head_out"):
    return -sol.direct_logit_attribution(lm, tokens, targets, foils, site)


@KEY.mistake(
    "direct_logit_attribution",
    "You summed over the prompts: the logit difference is a mean over the batch.",
)
def dla_batch_sum(sol, lm, tokens, targets, foils, site="head_out"):
    if tokens.shape[0] == 1:
        raise NotThisProblem
    return tokens.shape[0] * sol.direct_logit_attribution(lm, tokens, targets, foils, site)


@KEY.mistake(
    "direct_logit_attribution",
    "You read the first position. The logits that predict the next token are the last "
    "position's: index -1.",
)
def dla_first_position(sol, lm, tokens, targets, foils, site="head_out"):
    return _dla(lm, tokens, targets, foils, site, position=0)


# ----- 3.12 logit_lens ---------------------------------------------------------------------------
@KEY.reference("logit_lens@model")
def model_logit_diff(sol, lm, tokens, targets, foils, position=-1):
    """The model's own mean logit difference at ``position``: the lens's last entry."""
    targets, foils = _ids(lm, targets), _ids(lm, foils)
    with torch.no_grad():
        logits = lm.model(tokens).logits[:, position]
    rows = torch.arange(tokens.shape[0])
    return float((logits[rows, targets] - logits[rows, foils]).mean())


def _lens(lm, tokens, targets, foils, position=-1, *, norm="recompute", shift=False,
          double_last=False, reduce="mean") -> Tensor:  # fmt: skip
    targets, foils = _ids(lm, targets), _ids(lm, foils)
    cache = _run_cache(lm, tokens, ["resid_pre", "resid_post"])
    last = lm.n_layers - 1
    if shift:
        streams = [cache["resid_post", L][:, position] for L in range(lm.n_layers)]
    else:
        streams = [cache["resid_pre", L][:, position] for L in range(lm.n_layers)]
    streams.append(cache["resid_post", last][:, position])
    x = torch.stack(streams)  # (L + 1, batch, d)
    unembed = lm.unembed.weight
    direction = unembed[targets] - unembed[foils]
    with torch.no_grad():
        if norm == "none":
            read = x
        elif norm == "frozen":
            scale = _final_scale(lm, x[-1])
            centred = x - x.mean(-1, keepdim=True) if _is_layer_norm(lm) else x
            read = lm.final_norm.weight * centred / scale
            if _is_layer_norm(lm):
                read = read + lm.final_norm.bias
        else:
            read = lm.final_norm(x)
            if double_last:
                read = torch.cat([read[:-1], lm.final_norm(read[-1:])])
        values = (read * direction).sum(-1)
    return values.sum(-1) if reduce == "sum" else values.mean(-1)


@KEY.mistake(
    "logit_lens",
    "You unembedded the residual stream without the final norm. The model never reads its "
    "stream raw: apply lm.final_norm first, as the model does at the end.",
)
def lens_no_norm(sol, lm, tokens, targets, foils, position=-1):
    return _lens(lm, tokens, targets, foils, position, norm="none")


@KEY.mistake(
    "logit_lens",
    "You unembedded the residual stream without the final norm (only the last entry, "
    "transformers' normalised last hidden state, went through it). The model never reads its "
    "stream raw: apply lm.final_norm to every layer's stream first.",
)
def lens_no_norm_but_last(sol, lm, tokens, targets, foils, position=-1):
    raw = _lens(lm, tokens, targets, foils, position, norm="none")
    normed = _lens(lm, tokens, targets, foils, position)
    return torch.cat([raw[:-1], normed[-1:]])


@KEY.mistake(
    "logit_lens",
    "Your last entry went through the final norm twice: the last hidden state transformers "
    "returns (hidden_states[-1], last_hidden_state) is already normalised.",
)
def lens_double_norm(sol, lm, tokens, targets, foils, position=-1):
    return _lens(lm, tokens, targets, foils, position, double_last=True)


@KEY.mistake(
    "logit_lens",
    "Entry L reads the residual stream entering layer L (resid_pre; entry 0 is the "
    "embeddings); yours reads the stream leaving it (resid_post), one layer late.",
)
def lens_resid_post(sol, lm, tokens, targets, foils, position=-1):
    return _lens(lm, tokens, targets, foils, position, shift=True)


@KEY.mistake(
    "logit_lens",
    "You froze the norm's scale at the final residual stream, as direct logit attribution "
    "does. The lens asks what the model would say if it stopped at layer L: normalise each "
    "layer's stream with its own scale (call lm.final_norm on it).",
)
def lens_frozen_scale(sol, lm, tokens, targets, foils, position=-1):
    return _lens(lm, tokens, targets, foils, position, norm="frozen")


@KEY.mistake("logit_lens", "The sign is flipped: the logit difference is target minus foil.")
def lens_sign(sol, lm, tokens, targets, foils, position=-1):
    return -sol.logit_lens(lm, tokens, targets, foils, position)


@KEY.mistake("logit_lens", "You summed over the prompts: average the logit difference.")
def lens_batch_sum(sol, lm, tokens, targets, foils, position=-1):
    if tokens.shape[0] == 1:
        raise NotThisProblem
    return _lens(lm, tokens, targets, foils, position, reduce="sum")


@KEY.mistake(
    "logit_lens",
    "You read the last position whatever `position` was: read the position you are given.",
)
def lens_always_last(sol, lm, tokens, targets, foils, position=-1):
    if position in (-1, tokens.shape[1] - 1):
        raise NotThisProblem
    return sol.logit_lens(lm, tokens, targets, foils, -1)


# ----- 3.13 path_patching ------------------------------------------------------------------------
def _paths(lm, clean, corrupted, metric, heads, path="direct", *, how="right") -> Tensor:
    """Path patching head by head, one forward pass each (the slow, obvious way) and its wrong
    versions. ``how``: "right"; "leak" (patched as usual: every later layer sees it);
    "frozen" (direct, with the final norm's scale of the corrupted run); "whole" (direct: the
    clean head output added, not the change); "block" (indirect: the change removed right after
    the head's layer); "last" (the head patched at the last position only)."""
    last = lm.n_layers - 1
    with torch.no_grad():
        c_cache = _run_cache(lm, clean, "head_out")
        k_cache = _run_cache(lm, corrupted, ["head_out", "resid_post"])
    final = k_cache["resid_post", last][:, -1]
    found = []
    for layer, head in heads:
        layer, head = int(layer), int(head)
        change = _head_vectors(lm, c_cache["head_out", layer][:, -1] - k_cache["head_out", layer][:, -1], layer)[:, head]  # fmt: skip
        with torch.no_grad():
            if path == "direct" and how in ("right", "whole", "frozen"):
                if how == "whole":
                    change = _head_vectors(lm, c_cache["head_out", layer][:, -1], layer)[:, head]
                if how == "frozen":
                    scale = _final_scale(lm, final)
                    x = final + change
                    centred = x - x.mean(-1, keepdim=True) if _is_layer_norm(lm) else x
                    normed = lm.final_norm.weight * centred / scale
                    if _is_layer_norm(lm):
                        normed = normed + lm.final_norm.bias
                    logits = lm.unembed(normed)
                else:
                    logits = lm.unembed(lm.final_norm(final + change))
            else:
                positions = [clean.shape[1] - 1] if how == "last" else None
                stack = [patch(lm, "head_out", layer, c_cache["head_out", layer],
                               heads=[head], positions=positions)]  # fmt: skip
                if path == "indirect" and how not in ("leak",):
                    where = layer if how == "block" else last

                    def remove(act, change=change):
                        act = act.clone()
                        act[:, -1] -= change
                        return act

                    stack.append(patch(lm, "resid_post", where, remove))
                with stack[0], (stack[1] if len(stack) > 1 else torch.no_grad()):
                    logits = lm.model(corrupted).logits[:, -1]
            found.append(float(metric(logits)))
    return torch.tensor(found)


@KEY.mistake(
    "path_patching",
    "Your direct path leaks: the head's clean output reached the later layers too (that is "
    "patching the head as usual, its total effect). On the direct path only the final "
    "residual stream gets it; every later layer must read the corrupted output.",
)
def paths_leak(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "direct":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "direct", how="leak")


@KEY.mistake(
    "path_patching",
    "Your indirect path still reaches the logits directly (that is patching the head as "
    "usual, its total effect). Take the head's change back out of the final residual stream "
    "at the last position.",
)
def paths_indirect_total(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "indirect":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "indirect", how="leak")


@KEY.mistake(
    "path_patching",
    "You froze the final norm's scale (as direct logit attribution does). Path patching runs "
    "the model: the final norm recomputes its scale on the patched stream.",
)
def paths_frozen_norm(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "direct":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "direct", how="frozen")


@KEY.mistake(
    "path_patching",
    "You added the head's whole clean output to the final residual stream, which already "
    "holds its corrupted output: add the change, clean minus corrupted.",
)
def paths_whole_output(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "direct":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "direct", how="whole")


@KEY.mistake(
    "path_patching",
    "Your answers follow the sorted heads. Return one value per entry of heads, in its order "
    "(repeats included).",
)
def paths_sorted(sol, lm, clean, corrupted, metric, heads, path="direct"):
    pairs = [(int(layer), int(head)) for layer, head in heads]
    if pairs == sorted(pairs):
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, sorted(pairs), path)


@KEY.mistake(
    "path_patching",
    "You took the head's change out right after its own layer, so no later layer saw it "
    "either. On the indirect path every later layer reads the clean output; only the final "
    "residual stream (what the logits read) must not.",
)
def paths_blocked(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "indirect":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "indirect", how="block")


@KEY.mistake(
    "path_patching",
    "You patched the head at the last position only. Its clean output goes in at every "
    "position; the later layers read the other positions too.",
)
def paths_last_position(sol, lm, clean, corrupted, metric, heads, path="direct"):
    if path != "indirect":
        raise NotThisProblem
    return _paths(lm, clean, corrupted, metric, heads, "indirect", how="last")


@KEY.mistake(
    "path_patching",
    "This is the noising direction (the corrupted output taking the path in the clean run). "
    "Path-patch the clean output into the corrupted run.",
)
def paths_noising(sol, lm, clean, corrupted, metric, heads, path="direct"):
    return sol.path_patching(lm, corrupted, clean, metric, heads, path)


# ----- 3.14 edge_attribution_patching -------------------------------------------------------------
def _edge_order(lm) -> Tensor:
    """Each sender's place among the receivers: embeddings -1, heads of layer L 2L, MLP L 2L+1."""
    order = [-1]
    for layer in range(lm.n_layers):
        order += [2 * layer] * lm.n_heads + [2 * layer + 1]
    return torch.tensor(order)


def _eap(
    lm,
    clean,
    corrupted,
    metric,
    *,
    grad_at="corrupted",
    sign=1.0,
    receivers="branch",
    heads="head_out",
    masked=True,
    embeddings=True,
    reduce="sum",
) -> Tensor:
    """EAP and its wrong versions. ``receivers``: "branch" (right), "stream" (the gradient at
    the stream, skip connection included), "swapped" (attention and MLP gradients exchanged),
    "own" (each sender's own gradient: node attribution, broadcast)."""
    n_layers = lm.n_layers
    sites = ["resid_pre", "attn_out", "mlp_out"]
    c_cache = _run_cache(lm, clean, ["head_out", "attn_out", "mlp_out", "resid_pre"])
    k_cache = _run_cache(lm, corrupted, ["head_out", "attn_out", "mlp_out", "resid_pre"])
    grads = {}
    for site in sites:
        grads[site] = _acts_grads(lm, clean if grad_at == "clean" else corrupted, metric, site)[1]
    g_pre, g_attn, g_mlp = grads["resid_pre"], grads["attn_out"], grads["mlp_out"]
    receive = []
    for layer in range(n_layers):
        if receivers == "stream":
            receive += [g_pre[layer], g_attn[layer]]
        elif receivers == "swapped":
            receive += [g_attn[layer] - g_mlp[layer], g_pre[layer] - g_attn[layer]]
        else:
            receive += [g_pre[layer] - g_attn[layer], g_attn[layer] - g_mlp[layer]]
    receive.append(g_mlp[n_layers - 1])
    receive = torch.stack(receive)  # (R, batch, pos, d)
    embed_change = c_cache["resid_pre", 0] - k_cache["resid_pre", 0]
    send = [embed_change if embeddings else torch.zeros_like(embed_change)]
    own = [g_pre[0]]
    for layer in range(n_layers):
        if heads == "head_out":
            z = c_cache["head_out", layer] - k_cache["head_out", layer]
            vectors = _head_vectors(lm, z, layer)
        else:
            vectors = _chunks(c_cache["attn_out", layer] - k_cache["attn_out", layer], lm.n_heads)
        send += list(vectors.unbind(2))
        send.append(c_cache["mlp_out", layer] - k_cache["mlp_out", layer])
        own += [g_attn[layer]] * lm.n_heads + [g_mlp[layer]]
    send = torch.stack(send)
    with torch.no_grad():
        if receivers == "own":
            scores = (send * torch.stack(own)).sum((-1, -2, -3))[:, None].expand(-1, 2 * n_layers + 1)
        elif reduce == "mean":
            scores = torch.einsum("sbpd,rbpd->sr", send, receive) / clean.shape[0]
        else:
            scores = torch.einsum("sbpd,rbpd->sr", send, receive)
        scores = sign * scores
        if masked:
            after = torch.arange(2 * n_layers + 1)[None, :] > _edge_order(lm)[:, None]
            scores = scores * after
    return scores.detach().clone()


@KEY.reference("patch_edges")
def exact_edges(sol, lm, clean, corrupted, metric, edges):
    """Exact edge patching (the solution notebook's patch_edges)."""
    return sol.patch_edges(lm, clean, corrupted, metric, edges)


@KEY.mistake(
    "edge_attribution_patching",
    "The sign is flipped: the change of the sender is clean minus corrupted.",
)
def eap_sign(sol, lm, clean, corrupted, metric):
    return -sol.edge_attribution_patching(lm, clean, corrupted, metric)


@KEY.mistake(
    "edge_attribution_patching",
    "The gradients come from the clean run. A clean-into-corrupted edge patch is linearised "
    "around the corrupted run: take the gradients there.",
)
def eap_grad_at_clean(sol, lm, clean, corrupted, metric):
    return _eap(lm, clean, corrupted, metric, grad_at="clean")


@KEY.mistake(
    "edge_attribution_patching",
    "That is the noising estimate ((corrupted - clean) . gradient at the clean run); this "
    "exercise asks for denoising.",
)
def eap_noising(sol, lm, clean, corrupted, metric):
    return _eap(lm, clean, corrupted, metric, grad_at="clean", sign=-1.0)


@KEY.mistake(
    "edge_attribution_patching",
    "Your receivers' gradients are the stream's, skip connection included: they count every "
    "later component, not only the receiver. Take the part that goes through the receiver: "
    "the gradient before it minus the gradient after it.",
)
def eap_stream_gradient(sol, lm, clean, corrupted, metric):
    return _eap(lm, clean, corrupted, metric, receivers="stream")


@KEY.mistake(
    "edge_attribution_patching",
    "Attention and MLP receivers are swapped: the attention's input is the stream entering "
    "the block (resid_pre), the MLP's is the stream after the attention.",
)
def eap_swapped_receivers(sol, lm, clean, corrupted, metric):
    return _eap(lm, clean, corrupted, metric, receivers="swapped")


@KEY.mistake(
    "edge_attribution_patching",
    "You cut the attention output into chunks for the heads. A head's output is its slice of "
    "the input of W_O times its own slice of W_O.",
)
def eap_attn_out_chunks(sol, lm, clean, corrupted, metric):
    return _eap(lm, clean, corrupted, metric, heads="attn_out")


@KEY.mistake(
    "edge_attribution_patching",
    "An edge exists only from a sender to a receiver that comes after it (attention 0, MLP 0, "
    "attention 1, ...): set the other entries to 0.",
)
def eap_unmasked(sol, lm, clean, corrupted, metric):
    return _eap(lm, clean, corrupted, metric, masked=False)


@KEY.mistake(
    "edge_attribution_patching",
    "That is node attribution (each sender's change times the gradient at its own output), "
    "the same for every receiver. An edge's score uses the gradient at the receiver's input.",
)
def eap_node(sol, lm, clean, corrupted, metric):
    return _eap(lm, clean, corrupted, metric, receivers="own")


@KEY.mistake(
    "edge_attribution_patching",
    "Row 0 is the embeddings' edges: their change is the clean minus the corrupted "
    "embeddings (the stream entering layer 0).",
)
def eap_no_embeddings(sol, lm, clean, corrupted, metric):
    return _eap(lm, clean, corrupted, metric, embeddings=False)


@KEY.mistake(
    "edge_attribution_patching",
    "You averaged over the batch. The metric already averages over the prompts, so the "
    "estimates add up over the batch: sum.",
)
def eap_batch_mean(sol, lm, clean, corrupted, metric):
    if clean.shape[0] == 1:
        raise NotThisProblem
    return _eap(lm, clean, corrupted, metric, reduce="mean")


# ----- 3.15 patch_head_set -----------------------------------------------------------------------
def _head_set(lm, source, target, metric, heads, *, positions=None, group=False, each=False):
    """The metric of the run on ``target`` with ``heads`` from the run on ``source``; with
    ``each``, every head patched alone and the changes added up."""
    cache = _run_cache(lm, source, "head_out")
    base = _corrupted_metric(lm, target, metric)
    chosen = sorted({(int(L), int(h)) for L, h in heads})
    kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
    size = lm.n_heads // kv

    def run(which):
        contexts = []
        for layer in sorted({L for L, _ in which}):
            mine = [h for L, h in which if L == layer]
            if group:
                mine = sorted({g for h in mine for g in range(h // size * size, (h // size + 1) * size)})
            contexts.append(patch(lm, "head_out", layer, cache["head_out", layer], heads=mine,
                                  positions=positions))  # fmt: skip
        with torch.no_grad():
            from contextlib import ExitStack

            with ExitStack() as stack:
                for context in contexts:
                    stack.enter_context(context)
                return float(metric(lm.model(target).logits[:, -1]))

    if each:
        return torch.tensor(base + sum(run([h]) - base for h in chosen))
    return torch.tensor(run(chosen))


@KEY.mistake(
    "patch_head_set",
    "Denoising and noising are swapped: denoising puts the clean outputs into the corrupted "
    "run (is the set sufficient?), noising puts the corrupted outputs into the clean run (is "
    "it necessary?).",
)
def set_swapped(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    other = "noise" if direction == "denoise" else "denoise"
    return sol.patch_head_set(lm, clean, corrupted, metric, heads, other)


@KEY.mistake(
    "patch_head_set",
    "You returned how much the metric fell (its clean value minus the patched one). Return "
    "the metric of the patched run itself, in both directions.",
)
def set_loss(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    if direction != "noise":
        raise NotThisProblem
    high = _corrupted_metric(lm, clean, metric)
    return high - sol.patch_head_set(lm, clean, corrupted, metric, heads, direction)


@KEY.mistake(
    "patch_head_set",
    "You patched the heads one at a time and added up their effects. Patch them all in one "
    "run: heads interact, and their effects do not add up.",
)
def set_each(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    if len({tuple(h) for h in heads}) < 2:
        raise NotThisProblem
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    return _head_set(lm, source, target, metric, heads, each=True)


@KEY.mistake(
    "patch_head_set",
    "You patched the heads at the last position only. Patch their outputs at every position.",
)
def set_last_position(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    return _head_set(lm, source, target, metric, heads, positions=[clean.shape[1] - 1])


@KEY.mistake(
    "patch_head_set",
    "You patched every query head that shares a key/value head with a chosen one. Each query "
    "head has its own output: patch only the heads you are given.",
)
def set_kv_group(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    kv = lm.model.config.to_dict().get("num_key_value_heads") or lm.n_heads
    if kv == lm.n_heads:
        raise NotThisProblem
    source, target = (clean, corrupted) if direction == "denoise" else (corrupted, clean)
    return _head_set(lm, source, target, metric, heads, group=True)


@KEY.mistake(
    "patch_head_set",
    "Only the first head of the list was patched: patch every (layer, head) in it.",
)
def set_first_only(sol, lm, clean, corrupted, metric, heads, direction="denoise"):
    if len({tuple(h) for h in heads}) < 2:
        raise NotThisProblem
    return sol.patch_head_set(lm, clean, corrupted, metric, list(heads)[:1], direction)


# ----- 3.16 circuit_faithfulness -----------------------------------------------------------------
def _faithful(lm, clean, corrupted, targets, foils, heads, *, keep=True, run="clean",
              positions=None, scale="pair", mean=False) -> Tensor:  # fmt: skip
    """Faithfulness and its wrong versions: ``keep`` False corrupts the heads in the set
    instead of the others; ``run`` "corrupted" denoises the set in the corrupted run."""
    targets, foils = _ids(lm, targets), _ids(lm, foils)
    rows = torch.arange(clean.shape[0])
    chosen = {(int(L), int(h)) for L, h in heads}

    def diff(tokens, contexts=()):
        from contextlib import ExitStack

        with torch.no_grad(), ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            logits = lm.model(tokens).logits[:, -1]
        return logits[rows, targets] - logits[rows, foils]

    high, low = diff(clean), diff(corrupted)
    if run == "corrupted":
        cache = _run_cache(lm, clean, "head_out")
        contexts = [
            patch(lm, "head_out", L, cache["head_out", L], heads=[h for h in range(lm.n_heads) if (L, h) in chosen])
            for L in range(lm.n_layers) if any((L, h) in chosen for h in range(lm.n_heads))
        ]  # fmt: skip
        now = diff(corrupted, contexts)
    else:
        cache = _run_cache(lm, corrupted, "head_out")
        contexts = []
        for L in range(lm.n_layers):
            which = [h for h in range(lm.n_heads) if ((L, h) in chosen) != keep]
            if which:
                contexts.append(patch(lm, "head_out", L, cache["head_out", L], heads=which,
                                      positions=positions))  # fmt: skip
        now = diff(clean, contexts)
    if scale == "clean":
        found = now / high
    elif scale == "batch":
        found = ((now.mean() - low.mean()) / (high.mean() - low.mean())).expand(len(rows))
    else:
        found = (now - low) / (high - low)
    return found.mean() if mean else found.clone()


@KEY.mistake(
    "circuit_faithfulness",
    "You measured the clean run's top token, not the target_ids given: the target need not be "
    "the token the model ranks first. Use the target and foil ids you are passed.",
)
def faith_argmax_target(sol, lm, clean, corrupted, targets, foils, heads):
    with torch.no_grad():
        top = lm.model(clean).logits[:, -1].argmax(-1)
    if torch.equal(top, _ids(lm, targets).expand_as(top)):
        raise NotThisProblem
    return _faithful(lm, clean, corrupted, top, foils, heads)


@KEY.mistake(
    "circuit_faithfulness",
    "You corrupted the heads in the set and kept the others: that ablates the circuit. Keep "
    "the set clean and give every *other* head its corrupted output.",
)
def faith_ablates_set(sol, lm, clean, corrupted, targets, foils, heads):
    return _faithful(lm, clean, corrupted, targets, foils, heads, keep=False)


@KEY.mistake(
    "circuit_faithfulness",
    "You normalised the batch's mean logit difference once. Faithfulness is per prompt pair: "
    "(LD_circuit - LD_corrupted) / (LD_clean - LD_corrupted) for each row, so that its spread "
    "shows.",
)
def faith_batch(sol, lm, clean, corrupted, targets, foils, heads):
    if clean.shape[0] == 1:
        raise NotThisProblem
    return _faithful(lm, clean, corrupted, targets, foils, heads, scale="batch")


@KEY.mistake(
    "circuit_faithfulness",
    "You denoised the set (its clean outputs in the corrupted run, everything else computed "
    "from the corrupted prompt). Faithfulness runs the clean prompt and corrupts every head "
    "*outside* the set.",
)
def faith_denoised_set(sol, lm, clean, corrupted, targets, foils, heads):
    return _faithful(lm, clean, corrupted, targets, foils, heads, run="corrupted")


@KEY.mistake(
    "circuit_faithfulness",
    "You divided by the clean logit difference only. Subtract the corrupted run's first: "
    "(LD_circuit - LD_corrupted) / (LD_clean - LD_corrupted).",
)
def faith_clean_only(sol, lm, clean, corrupted, targets, foils, heads):
    return _faithful(lm, clean, corrupted, targets, foils, heads, scale="clean")


@KEY.mistake(
    "circuit_faithfulness",
    "You corrupted the other heads at the last position only. Give them their corrupted "
    "outputs at every position: information reaches the last position through earlier ones.",
)
def faith_last_position(sol, lm, clean, corrupted, targets, foils, heads):
    return _faithful(
        lm, clean, corrupted, targets, foils, heads, positions=[clean.shape[1] - 1]
    )
