"""Each lab 01 check passes the solution and other correct implementations, and fails the stub
and plausible mistakes, with a message that names the mistake.

The solution functions are taken from solutions/01_attribution.ipynb itself (the cells that
define an exercise), and the stubs from the student version that ``labkit build`` writes.
Hidden variants (other seeds, shapes and tiny-model families) are tested too, and a recorded
run replays to the same result in the grader's process.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from functools import reduce
from math import factorial
from pathlib import Path

import nbformat
import networkx as nx
import pytest
import torch
from torch import Tensor

import labkit
from labkit.build import strip_code_solution
from labkit.checks import lab01 as checks
from labkit.checks.core import run_check
from labkit.checks.transport import Recorder, Replayer
from labkit.hooks import capture

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_attribution.ipynb"


def _exercise_cells() -> dict[str, str]:
    """{function name: cell source} for every solution cell that defines an exercise."""
    cells = {}
    for cell in nbformat.read(SOLUTION, as_version=4).cells:
        if cell.cell_type == "code" and "# BEGIN SOLUTION" in cell.source:
            for line in cell.source.splitlines():
                if line.startswith("def "):
                    cells[line[4:].split("(")[0]] = cell.source
                    break
    return cells


def _define(source: str, name: str) -> Callable:
    namespace = {"torch": torch, "Tensor": Tensor, "Callable": Callable, "nx": nx, "labkit": labkit}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    return namespace[name]


CELLS = _exercise_cells()


def solution(name: str) -> Callable:
    return _define(CELLS[name], name)


def stub(name: str) -> Callable:
    return _define(strip_code_solution(CELLS[name]), name)


class Fresh:
    """A wrong implementation with state (a cache, a reused leaf): built anew for each test."""

    def __init__(self, factory: Callable[[], Callable]) -> None:
        self.factory = factory


def _fn(entry) -> Callable:
    return entry.factory() if isinstance(entry, Fresh) else entry


# ----- gradients ----------------------------------------------------------------------------------
def grad_of(f: Callable, x: Tensor) -> Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    return g


def _reused_leaf(reduce_fn: Callable[[Tensor, Tensor], Tensor]) -> Fresh:
    """The classic bug: one leaf kept between calls, .backward() without zeroing .grad."""

    def factory():
        leaves: dict = {}

        def attribute(f, x):
            if x.shape not in leaves:
                leaves[x.shape] = torch.zeros_like(x).requires_grad_(True)
            leaf = leaves[x.shape]
            with torch.no_grad():
                leaf.copy_(x)
            f(leaf).sum().backward()
            return reduce_fn(leaf.detach(), leaf.grad)

        return attribute

    return Fresh(factory)


def _captum(method: str) -> Callable:
    import warnings

    from captum.attr import InputXGradient, Saliency

    def attribute(f, x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method == "saliency":
                return Saliency(f).attribute(x.clone(), abs=False)[0].norm(dim=-1)
            return InputXGradient(f).attribute(x.clone())[0].sum(-1).detach()

    return attribute


def _zero_each_token(f, x):
    rows = x.repeat(x.shape[1], 1, 1)
    rows[torch.arange(x.shape[1]), torch.arange(x.shape[1])] = 0.0
    with torch.no_grad():
        return f(x) - f(rows)


# ----- integrated gradients --------------------------------------------------------------------
def ig_rule(f, x, b, n, rule: str) -> Tensor:
    """IG with a chosen quadrature, one alpha at a time (a looped implementation)."""
    if rule == "midpoint":
        alphas, weights = [(k + 0.5) / n for k in range(n)], [1 / n] * n
    elif rule == "right":
        alphas, weights = [(k + 1) / n for k in range(n)], [1 / n] * n
    elif rule == "left":
        alphas, weights = [k / n for k in range(n)], [1 / n] * n
    elif rule == "linspace":
        alphas, weights = torch.linspace(0, 1, n).tolist(), [1 / n] * n
    elif rule == "trapezoid":
        alphas = [k / (n - 1) for k in range(n)]
        weights = [0.5 / (n - 1)] + [1 / (n - 1)] * (n - 2) + [0.5 / (n - 1)]
    total = torch.zeros_like(x)
    for alpha, weight in zip(alphas, weights, strict=True):
        total += weight * grad_of(f, b + alpha * (x - b))
    return ((x - b) * total)[0].sum(-1)


def _ig_captum(method: str) -> Callable:
    from captum.attr import IntegratedGradients

    def ig(f, x, b, n):
        return (
            IntegratedGradients(f)
            .attribute(x.clone(), baselines=b.clone(), n_steps=n, method=method)[0]
            .sum(-1)
            .detach()
        )

    return ig


def _ig_float64(f, x, b, n):
    alphas = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    path = (b.double() + alphas[:, None, None] * (x - b).double()).to(x.dtype)
    path.requires_grad_(True)
    (grads,) = torch.autograd.grad(f(path).sum(), path)
    return ((x - b).double()[0] * grads.double().mean(0)).sum(-1)


def _ig_reversed_path(f, x, b, n):
    """From the input towards the baseline: the midpoints are the same set."""
    alphas = (torch.arange(n, dtype=x.dtype) + 0.5) / n
    path = (x - alphas[:, None, None] * (x - b)).requires_grad_(True)
    (grads,) = torch.autograd.grad(f(path).sum(), path)
    return ((x - b)[0] * grads.mean(0)).sum(-1)


# ----- attention ---------------------------------------------------------------------------------
def _lwa(a, w, row=-1, reduce="mean", norm="sum"):
    heads = {"mean": a[:, :, row].mean(1), "sum": a[:, :, row].sum(1), "max": a[:, :, row].amax(1)}
    weights = {"sum": w / w.sum(), "none": w, "softmax": w.softmax(0), "max": w / w.max()}[norm]
    return weights @ heads[reduce]


def _mats(a, residual=True, reduce="mean", renorm="after"):
    n = a.shape[-1]
    eye = torch.eye(n, dtype=a.dtype)
    out = []
    for layer in a:
        m = {"mean": layer.mean(0), "sum": layer.sum(0), "max": layer.amax(0)}[reduce]
        if renorm == "before":
            m = m / m.sum(-1, keepdim=True)
        if residual:
            m = 0.5 * m + 0.5 * eye
        if renorm == "after":
            m = m / m.sum(-1, keepdim=True)
        out.append(m)
    return out


def _roll(mats, left=True):
    out = torch.eye(mats[0].shape[-1], dtype=mats[0].dtype)
    for m in mats:
        out = m @ out if left else out @ m
    return out


def _rollout_a_plus_i(a):
    """(A + I), rows renormalised: the same matrices as 0.5 A + 0.5 I renormalised."""
    eye = torch.eye(a.shape[-1])
    out = eye
    for layer in a:
        m = layer.mean(0) + eye
        out = (m / m.sum(-1, keepdim=True)) @ out
    return out


def _flow_graph(mats, target=-1, reverse=False, dense=False, flow_func=None):
    from networkx.algorithms.flow import edmonds_karp

    n = mats[0].shape[-1]
    graph = nx.DiGraph()
    graph.add_nodes_from((layer, i) for layer in range(len(mats) + 1) for i in range(n))
    for layer, m in enumerate(mats):
        for i in range(n):
            for j in range(n):
                c = float(m[j, i] if reverse else m[i, j])
                if dense or c > 0:
                    graph.add_edge((layer, j), (layer + 1, i), capacity=c)
    sink = (len(mats), target % n)
    return torch.tensor(
        [
            nx.maximum_flow_value(graph, (0, j), sink, flow_func=flow_func or edmonds_karp)
            for j in range(n)
        ]
    )


def _widest(mats, target=-1):
    n = mats[0].shape[-1]
    best = torch.zeros(n, n)
    best.fill_diagonal_(float("inf"))
    for m in mats:
        best = torch.stack(
            [torch.stack([torch.minimum(best[j], m[i]).max() for i in range(n)]) for j in range(n)]
        )
    return best[:, target % n]


# ----- tokens ------------------------------------------------------------------------------------
def _rows(tokens, masks, r):
    batch = tokens.repeat(len(masks), 1)
    for row, positions in enumerate(masks):
        batch[row, list(positions)] = r
    return batch


def _delete(tokens, positions):
    return tokens[:, [i for i in range(tokens.shape[1]) if i not in set(positions)]]


def _occlusion_rows(score, ids, masks, r):
    return score(ids)[0] - score(_rows(ids, masks, r))


def _occlusion_in_place(score, ids, r):
    out = []
    full = score(ids)[0]
    for i in range(ids.shape[1]):
        old = int(ids[0, i])
        ids[0, i] = r  # writes into the caller's tensor, and forgets to put it back at the end
        out.append(full - score(ids)[0])
        if i < ids.shape[1] - 1:
            ids[0, i] = old
    return torch.stack(out)


def _spearman_d2(a, b):
    n = len(a)
    ra, rb = torch.empty(n), torch.empty(n)
    ra[a.argsort()] = torch.arange(n, dtype=torch.float)
    rb[b.argsort()] = torch.arange(n, dtype=torch.float)
    return float(1 - 6 * ((ra - rb) ** 2).sum() / (n * (n**2 - 1)))


def _spearman_python(a, b):
    def ranks(v):
        values = v.tolist()
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0] * len(values)
        for rank, i in enumerate(order, start=1):
            out[i] = rank
        return out

    ra, rb = ranks(a), ranks(b)
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var


def _corr(x, y):
    return float(torch.corrcoef(torch.stack([x.double(), y.double()]))[0, 1])


# ----- randomisation ------------------------------------------------------------------------------
def _randomize_normal_(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(float(p.mean()), float(p.std()), generator=gen)


def _randomize_state_dict(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: torch.randn(v.shape, generator=gen) * v.std() + v.mean()
        for k, v in module.state_dict().items()
    }
    module.load_state_dict(state)


def _randomize_float64(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(noise * p.double().std() + p.double().mean())


def _randomize(module, seed=0, *, skip_frozen=False, reseed=False, dist="normal", scope="own"):
    gen = torch.Generator().manual_seed(seed)
    params = list(module.parameters())
    everything = torch.cat([p.flatten() for p in params])
    with torch.no_grad():
        for p in params:
            if skip_frozen and not p.requires_grad:
                continue
            if reseed:
                gen = torch.Generator().manual_seed(seed)
            mean, std = (
                (p.mean(), p.std()) if scope == "own" else (everything.mean(), everything.std())
            )
            if dist == "normal":
                noise = torch.randn(p.shape, generator=gen)
            else:  # uniform with mean 0 and std 1
                noise = (torch.rand(p.shape, generator=gen) - 0.5) * 12**0.5
            p.copy_(noise * std + mean)


def _randomize_manual_seed(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape) * p.std() + p.mean())


def _randomize_shuffle(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=gen)].view_as(p))


def _randomize_new_parameters(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            new = torch.randn(p.shape, generator=gen) * p.std() + p.mean()
            setattr(sub, name, torch.nn.Parameter(new.detach()))


def _randomize_copy(module, seed=0):
    clone = copy.deepcopy(module)
    _randomize_normal_(clone, seed)
    return clone


# ----- contrastive function ----------------------------------------------------------------------
def _ld(lm, t, f, position=-1, kind="logit", grad=True):
    def diff(e):
        logits = lm.model(inputs_embeds=e).logits[:, position]
        if kind == "prob":
            logits = logits.softmax(-1)
        return logits[:, t] - logits[:, f]

    if grad:
        return diff

    def no_grad(e):
        with torch.no_grad():
            return diff(e)

    return no_grad


def _ld_base_model(lm, t, f):
    def diff(e):
        final = lm.model.base_model(inputs_embeds=e).last_hidden_state[:, -1]  # after the norm
        logits = lm.unembed(final)
        return logits[:, t] - logits[:, f]

    return diff


def _ld_loop(lm, t, f):
    def diff(e):
        rows = [lm.model(inputs_embeds=row[None]).logits[0, -1] for row in e]
        return torch.stack([r[t] - r[f] for r in rows])

    return diff


def _ld_without_final_norm(lm, t, f):
    def diff(e):
        last = lm.n_layers - 1
        with capture(lm, "resid_post", last, keep_grad=True) as cache:
            lm.model(inputs_embeds=e)
        logits = lm.unembed(cache["resid_post", last][:, -1])
        return logits[:, t] - logits[:, f]

    return diff


def _ld_cached_factory():
    """Computes the answer once (the cache outlives the function) and then returns it."""
    memo: dict = {}

    def logit_difference_fn(lm, t, f):
        def diff(e):
            if "value" not in memo:
                memo["value"] = _ld(lm, t, f)(e)
            return memo["value"]

        return diff

    return logit_difference_fn


# ----- layer attribution --------------------------------------------------------------------------
def _layer_hidden_states(lm, tokens, target_id):
    x = lm.embed(tokens).detach().requires_grad_(True)
    out = lm.model(inputs_embeds=x, output_hidden_states=True)
    states = out.hidden_states[:-1]  # the input of every block (the last entry is normed)
    grads = torch.autograd.grad(out.logits[0, -1, target_id], states)
    return torch.stack([(s * g)[0].sum(-1) for s, g in zip(states, grads, strict=True)]).detach()


def _layer_loop(lm, tokens, target_id):
    rows = []
    for layer in range(lm.n_layers):
        x = lm.embed(tokens).detach().requires_grad_(True)
        with capture(lm, "resid_pre", layer, keep_grad=True) as cache:
            logit = lm.model(inputs_embeds=x).logits[0, -1, target_id]
            act = cache["resid_pre", layer]
            (grad,) = torch.autograd.grad(logit, act)
        rows.append((act * grad)[0].sum(-1).detach().double())
    return torch.stack(rows)


def _layer_variant(site="resid_pre", reduce="xg", sign=1.0):
    def attribute(lm, tokens, target_id):
        x = lm.embed(tokens).detach().requires_grad_(True)
        with capture(lm, site, keep_grad=True) as cache:
            logit = lm.model(inputs_embeds=x).logits[0, -1, target_id]
            acts = [cache[site, layer] for layer in range(lm.n_layers)]
            grads = torch.autograd.grad(logit, acts)
        rows = []
        for a, g in zip(acts, grads, strict=True):
            rows.append(
                {"xg": (a * g)[0].sum(-1), "norm": g[0].norm(dim=-1), "g": g[0].sum(-1)}[reduce]
            )
        return sign * torch.stack(rows).detach()

    return attribute


def _layer_hidden_outputs(lm, tokens, target_id):
    x = lm.embed(tokens).detach().requires_grad_(True)
    out = lm.model(inputs_embeds=x, output_hidden_states=True)
    states = out.hidden_states[1:]
    grads = torch.autograd.grad(out.logits[0, -1, target_id], states)
    return torch.stack([(s * g)[0].sum(-1) for s, g in zip(states, grads, strict=True)]).detach()


def _layer_leaky_hooks(lm, tokens, target_id):
    acts = []
    for block in lm.blocks:
        block.register_forward_pre_hook(lambda mod, args: acts.append(args[0]) or None)
    x = lm.embed(tokens).detach().requires_grad_(True)
    logit = lm.model(inputs_embeds=x).logits[0, -1, target_id]
    grads = torch.autograd.grad(logit, acts)
    return torch.stack([(a * g)[0].sum(-1) for a, g in zip(acts, grads, strict=True)]).detach()


# ----- Shapley values -----------------------------------------------------------------------------
def _shapley_weighted(weight):
    def shapley(score, tokens, positions, r):
        positions = [int(p) for p in positions]
        n = len(positions)
        coalitions = [c for k in range(n + 1) for c in itertools.combinations(range(n), k)]
        masks = [[positions[i] for i in range(n) if i not in c] for c in coalitions]
        values = dict(zip(coalitions, score(_rows(tokens, masks, r)).tolist(), strict=True))
        out = torch.zeros(n, dtype=torch.float64)
        for i in range(n):
            for c in coalitions:
                if i not in c:
                    out[i] += weight(len(c), n) * (values[tuple(sorted((*c, i)))] - values[c])
        return out

    return shapley


def _shapley_permutations(score, tokens, positions, r):
    positions = [int(p) for p in positions]
    n = len(positions)
    out = torch.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        present: set = set()
        before = score(_rows(tokens, [positions], r))[0]
        for i in perm:
            present.add(i)
            absent = [positions[j] for j in range(n) if j not in present]
            after = score(_rows(tokens, [absent], r))[0]
            out[i] += after - before
            before = after
    return out / len(perms)


def _shapley_sampled(score, tokens, positions, r, n_samples=6):
    positions = [int(p) for p in positions]
    n = len(positions)
    gen = torch.Generator().manual_seed(0)
    out = torch.zeros(n)
    for _ in range(n_samples):
        perm = torch.randperm(n, generator=gen).tolist()
        present: set = set()
        before = score(_rows(tokens, [positions], r))[0]
        for i in perm:
            present.add(i)
            after = score(_rows(tokens, [[positions[j] for j in range(n) if j not in present]], r))
            out[i] += after[0] - before
            before = after[0]
    return out / n_samples


def _shapley_sorted(score, tokens, positions, r):
    ordered = sorted(int(p) for p in positions)
    return _shapley_weighted(_w_shapley)(score, tokens, ordered, r)


def _w_shapley(s, n):
    return factorial(s) * factorial(n - s - 1) / factorial(n)


def _shapley_endpoints(score, tokens, positions, r):
    positions = [int(p) for p in positions]
    full, none = score(tokens)[0], score(_rows(tokens, [positions], r))[0]
    removed = full - score(_rows(tokens, [[p] for p in positions], r))
    added = score(_rows(tokens, [[q for q in positions if q != p] for p in positions], r)) - none
    return (removed + added) / 2


def _avg_grad(f, x, b, n):
    total = torch.zeros_like(x)
    for k in range(n):
        total += grad_of(f, b + (k + 0.5) / n * (x - b)) / n
    return total


# Each entry: exercise -> (check, correct alternatives, {wrong: (implementation, message part)}).
CASES: dict[str, tuple[Callable, dict[str, Callable], dict[str, tuple[object, str]]]] = {
    "saliency": (
        checks.check_saliency,
        {
            "loop over positions": lambda f, x: torch.stack(
                [grad_of(f, x)[0, p].pow(2).sum().sqrt() for p in range(x.shape[1])]
            ),
            "linalg.vector_norm in float64": lambda f, x: torch.linalg.vector_norm(
                grad_of(f, x).double(), dim=-1
            )[0],
            "captum Saliency": _captum("saliency"),
        },
        {
            "signed sum of the gradient": (lambda f, x: grad_of(f, x)[0].sum(-1), "signed"),
            "L1 norm": (lambda f, x: grad_of(f, x)[0].abs().sum(-1), "L1 norm"),
            "squared norm": (lambda f, x: grad_of(f, x)[0].pow(2).sum(-1), "square root"),
            "root mean square": (lambda f, x: grad_of(f, x)[0].pow(2).mean(-1).sqrt(), "MEAN"),
            "largest entry": (lambda f, x: grad_of(f, x)[0].abs().amax(-1), "largest"),
            "gradient times input": (
                lambda f, x: (grad_of(f, x) * x)[0].norm(dim=-1),
                "multiplied by the input",
            ),
            "gradient at zero": (
                lambda f, x: grad_of(f, torch.zeros_like(x))[0].norm(dim=-1),
                "AT the input",
            ),
            "normalised to sum to one": (
                lambda f, x: (lambda s: s / s.sum())(grad_of(f, x)[0].norm(dim=-1)),
                "normalise",
            ),
            "leaf reused, gradients pile up": (
                _reused_leaf(lambda x, g: g[0].norm(dim=-1)),
                "piled up",
            ),
            "norm over positions": (lambda f, x: grad_of(f, x)[0].norm(dim=0), "shape"),
        },
    ),
    "input_x_gradient": (
        checks.check_input_x_gradient,
        {
            "einsum": lambda f, x: torch.einsum("bpd,bpd->p", x, grad_of(f, x)),
            "loop, float64": lambda f, x: torch.stack(
                [(x[0, p].double() * grad_of(f, x)[0, p].double()).sum() for p in range(x.shape[1])]
            ),
            "captum InputXGradient": _captum("input_x_gradient"),
        },
        {
            "wrong sign": (lambda f, x: -(x * grad_of(f, x))[0].sum(-1), "Wrong sign"),
            "norm instead of sum": (lambda f, x: (x * grad_of(f, x))[0].norm(dim=-1), "norm"),
            "missing input": (lambda f, x: grad_of(f, x)[0].sum(-1), "gradient alone"),
            "absolute value": (lambda f, x: (x * grad_of(f, x))[0].abs().sum(-1), "absolute"),
            "mean over d_model": (lambda f, x: (x * grad_of(f, x))[0].mean(-1), "not the mean"),
            "true change when zeroing": (_zero_each_token, "first-order estimate"),
            "gradient at zero": (
                lambda f, x: (x * grad_of(f, torch.zeros_like(x)))[0].sum(-1),
                "not at zero",
            ),
            "leaf reused, gradients pile up": (
                _reused_leaf(lambda x, g: (x * g)[0].sum(-1)),
                "piled up",
            ),
        },
    ),
    "integrated_gradients": (
        checks.check_integrated_gradients,
        {
            "midpoint, looped": lambda f, x, b, n: ig_rule(f, x, b, n, "midpoint"),
            "captum riemann_middle": _ig_captum("riemann_middle"),
            "float64 accumulation": _ig_float64,
            "path from the input to the baseline": _ig_reversed_path,
        },
        {
            "right Riemann": (lambda f, x, b, n: ig_rule(f, x, b, n, "right"), "right Riemann"),
            "left Riemann": (lambda f, x, b, n: ig_rule(f, x, b, n, "left"), "left Riemann"),
            "trapezoid": (lambda f, x, b, n: ig_rule(f, x, b, n, "trapezoid"), "trapezoid"),
            "linspace alphas": (lambda f, x, b, n: ig_rule(f, x, b, n, "linspace"), "linspace"),
            "captum's default (Gauss-Legendre)": (_ig_captum("gausslegendre"), "Gauss-Legendre"),
            "n_steps ignored (50)": (
                lambda f, x, b, n: ig_rule(f, x, b, 50, "midpoint"),
                "use the n_steps argument",
            ),
            "missing 1/n_steps": (
                lambda f, x, b, n: n * ig_rule(f, x, b, n, "midpoint"),
                "dividing by n_steps",
            ),
            "gradient only at the input": (
                lambda f, x, b, n: ((x - b) * grad_of(f, x))[0].sum(-1),
                "only the gradient at the input",
            ),
            "zero baseline": (
                lambda f, x, b, n: ig_rule(f, x, torch.zeros_like(x), n, "midpoint"),
                "zero baseline",
            ),
            "input instead of input - baseline": (
                lambda f, x, b, n: (x * _avg_grad(f, x, b, n))[0].sum(-1),
                "multiplied by the input alone",
            ),
            "wrong sign": (lambda f, x, b, n: -ig_rule(f, x, b, n, "midpoint"), "Wrong sign"),
        },
    ),
    "completeness_gap": (
        checks.check_completeness_gap,
        {
            "separate calls, item()": lambda f, x, b, a: (
                a.sum().item() - (f(x).item() - f(b).item())
            ),
            "stacked batch": lambda f, x, b, a: float(
                a.sum() - (lambda v: v[0] - v[1])(f(torch.cat([x, b])))
            ),
            "float64": lambda f, x, b, a: float(
                a.double().sum() - (f(x.double()) - f(b.double())).sum()
            ),
        },
        {
            "reversed sign": (lambda f, x, b, a: float((f(x) - f(b)).sum() - a.sum()), "sign"),
            "ignores the baseline": (lambda f, x, b, a: float(a.sum() - f(x).sum()), "ignored"),
            "absolute value": (
                lambda f, x, b, a: abs(float(a.sum() - (f(x) - f(b)).sum())),
                "absolute value",
            ),
            "relative error": (
                lambda f, x, b, a: float((a.sum() - (f(x) - f(b)).sum()) / (f(x) - f(b)).sum()),
                "relative",
            ),
            "f(zeros) instead of f(baseline)": (
                lambda f, x, b, a: float(a.sum() - (f(x) - f(torch.zeros_like(x))).sum()),
                "f(zeros)",
            ),
            "sum of |scores|": (
                lambda f, x, b, a: float(a.abs().sum() - (f(x) - f(b)).sum()),
                "with their signs",
            ),
            "returns the change only": (
                lambda f, x, b, a: float((f(x) - f(b)).sum()),
                "alone",
            ),
        },
    ),
    "space_baseline": (
        checks.check_space_baseline,
        {
            "index the weight matrix": lambda lm, ids: torch.cat(
                [
                    lm.embed.weight[ids[:, :1]],
                    lm.embed.weight[lm.token_id(" ")].expand(1, ids.shape[1] - 1, -1),
                ],
                dim=1,
            ).detach(),
            "torch.where": lambda lm, ids: lm.embed(
                torch.where(
                    torch.arange(ids.shape[1]) == 0, ids, torch.full_like(ids, lm.token_id(" "))
                )
            ).detach(),
            "embed, then overwrite": lambda lm, ids: (
                lambda e: torch.cat(
                    [e[:, :1], lm.embed(torch.full_like(ids[:, 1:], lm.token_id(" ")))], 1
                )
            )(lm.embed(ids)).detach(),
        },
        {
            "zero baseline": (
                lambda lm, ids: torch.zeros(1, ids.shape[1], lm.d_model),
                "zero baseline",
            ),
            "zero except the anchor": (
                lambda lm, ids: torch.cat(
                    [lm.embed(ids[:, :1]), torch.zeros(1, ids.shape[1] - 1, lm.d_model)], dim=1
                ).detach(),
                "you put zeros there",
            ),
            "anchor replaced too": (
                lambda lm, ids: lm.embed(torch.full_like(ids, lm.token_id(" "))).detach(),
                "Keep position 0",
            ),
            "pad token instead of space": (  # its embedding is zero
                lambda lm, ids: lm.embed(
                    torch.cat([ids[:, :1], torch.zeros_like(ids[:, 1:])], dim=1)
                ).detach(),
                "pad token",
            ),
            "token ids, not embeddings": (
                lambda lm, ids: torch.cat(
                    [ids[:, :1], torch.full_like(ids[:, 1:], lm.token_id(" "))], dim=1
                ),
                "token ids",
            ),
            "always the anchor at position 0": (
                lambda lm, ids: lm.embed(
                    torch.cat(
                        [
                            torch.full_like(ids[:, :1], lm.anchor_token_id),
                            torch.full_like(ids[:, 1:], lm.token_id(" ")),
                        ],
                        1,
                    )
                ).detach(),
                "INPUT's first token",
            ),
            "writes into the tokens": (
                lambda lm, ids: (
                    ids.__setitem__((slice(None), slice(1, None)), lm.token_id(" ")),
                    lm.embed(ids).detach(),
                )[1],
                "changed its input",
            ),
        },
    ),
    "layer_weighted_attention": (
        checks.check_layer_weighted_attention,
        {
            "einsum": lambda a, w: torch.einsum("l,lhp->p", w / w.sum(), a[:, :, -1]) / a.shape[1],
            "loop": lambda a, w: (
                sum(w[layer] * a[layer, :, a.shape[-1] - 1].mean(0) for layer in range(a.shape[0]))
                / w.sum()
            ),
            "float64, normalise the result": lambda a, w: (lambda v: v / v.sum())(
                (w.double()[:, None] * a[:, :, -1].double().mean(1)).sum(0)
            ),
        },
        {
            "column instead of row": (
                lambda a, w: (w / w.sum()) @ a[:, :, :, -1].mean(1),
                "last COLUMN",
            ),
            "first row": (lambda a, w: _lwa(a, w, row=0), "first row"),
            "sum over heads": (lambda a, w: _lwa(a, w, reduce="sum"), "do not sum"),
            "max over heads": (lambda a, w: _lwa(a, w, reduce="max"), "not take the max"),
            "weights not normalised": (lambda a, w: _lwa(a, w, norm="none"), "Normalise"),
            "softmax of the weights": (lambda a, w: _lwa(a, w, norm="softmax"), "softmax"),
            "divided by the largest weight": (lambda a, w: _lwa(a, w, norm="max"), "their SUM"),
            "ignores the weights": (lambda a, w: a[:, :, -1].mean((0, 1)), "plain mean"),
        },
    ),
    "attention_rollout": (
        checks.check_attention_rollout,
        {
            "functools.reduce": lambda a: reduce(lambda acc, m: m @ acc, _mats(a)),
            "(A + I), rows renormalised": _rollout_a_plus_i,
            "float64": lambda a: _roll(_mats(a.double())),
        },
        {
            "no residual identity": (lambda a: _roll(_mats(a, residual=False)), "residual"),
            "wrong multiplication order": (lambda a: _roll(_mats(a), left=False), "LEFT"),
            "max over heads": (lambda a: _roll(_mats(a, reduce="max")), "not max"),
            "sum over heads": (lambda a: _roll(_mats(a, reduce="sum")), "do not sum"),
            "transposed": (lambda a: _roll(_mats(a)).T, "transpose"),
            "per-head rollout, averaged": (
                lambda a: torch.stack(
                    [_roll(_mats(a[:, h : h + 1])) for h in range(a.shape[1])]
                ).mean(0),
                "each head separately",
            ),
            "last layer only": (lambda a: _mats(a)[-1], "last layer only"),
            "average of the layers": (lambda a: sum(_mats(a)) / a.shape[0], "do not average"),
            "no renormalisation": (lambda a: _roll(_mats(a, renorm="none")), "Renormalise each"),
            "renormalised before mixing": (
                lambda a: _roll(_mats(a, renorm="before")),
                "AFTER mixing",
            ),
        },
    ),
    "attention_flow": (
        checks.check_attention_flow,
        {
            "dense graph, Edmonds-Karp": lambda a, target=-1: _flow_graph(
                _mats(a), target, dense=True
            ),
            "shortest augmenting path, float64": lambda a, target=-1: _flow_graph(
                _mats(a.double()),
                target,
                flow_func=nx.algorithms.flow.shortest_augmenting_path,
            ),
        },
        {
            "widest path": (lambda a, target=-1: _widest(_mats(a), target), "widest single path"),
            "rollout instead of flow": (lambda a, target=-1: _roll(_mats(a))[target], "rollout"),
            "no residual": (
                lambda a, target=-1: _flow_graph(_mats(a, residual=False), target),
                "residual",
            ),
            "edges reversed": (
                lambda a, target=-1: _flow_graph(_mats(a), target, reverse=True),
                "wrong way",
            ),
            "heads summed": (
                lambda a, target=-1: _flow_graph(_mats(a, reduce="sum"), target),
                "do not sum",
            ),
            "max over heads": (
                lambda a, target=-1: _flow_graph(_mats(a, reduce="max"), target),
                "not max",
            ),
            "ignores target": (lambda a, target=-1: _flow_graph(_mats(a), -1), "`target`"),
            "no renormalisation": (
                lambda a, target=-1: _flow_graph(_mats(a, renorm="none"), target),
                "Renormalise each",
            ),
            "renormalised before mixing": (
                lambda a, target=-1: _flow_graph(_mats(a, renorm="before"), target),
                "AFTER mixing",
            ),
        },
    ),
    "occlusion": (
        checks.check_occlusion,
        {
            "loop": lambda score, ids, r: torch.stack(
                [_occlusion_rows(score, ids, [[i]], r)[0] for i in range(ids.shape[1])]
            ),
            "masked_fill, float64": lambda score, ids, r: (
                score(ids)[0].double()
                - score(
                    ids.repeat(ids.shape[1], 1).masked_fill(torch.eye(ids.shape[1]).bool(), r)
                ).double()
            ),
        },
        {
            "deletion instead of replacement": (
                lambda score, ids, r: torch.stack(
                    [score(ids)[0] - score(_delete(ids, [i]))[0] for i in range(ids.shape[1])]
                ),
                "You deleted",
            ),
            "wrong sign": (
                lambda score, ids, r: (
                    -_occlusion_rows(score, ids, [[i] for i in range(ids.shape[1])], r)
                ),
                "Wrong sign",
            ),
            "off by one (next token)": (
                lambda score, ids, r: _occlusion_rows(
                    score, ids, [[(i + 1) % ids.shape[1]] for i in range(ids.shape[1])], r
                ),
                "Off by one",
            ),
            "off by one (previous token)": (
                lambda score, ids, r: _occlusion_rows(
                    score, ids, [[(i - 1) % ids.shape[1]] for i in range(ids.shape[1])], r
                ),
                "Off by one",
            ),
            "keeps only token i": (
                lambda score, ids, r: _occlusion_rows(
                    score,
                    ids,
                    [[j for j in range(ids.shape[1]) if j != i] for i in range(ids.shape[1])],
                    r,
                ),
                "EXCEPT i",
            ),
            "always token 0": (
                lambda score, ids, r: _occlusion_rows(
                    score, ids, [[i] for i in range(ids.shape[1])], 0
                ),
                "you always used 0",
            ),
            "writes into the tokens": (_occlusion_in_place, "changed its input"),
        },
    ),
    "logit_difference_fn": (
        checks.check_logit_difference_fn,
        {
            "log-softmax difference": lambda lm, t, f: (
                lambda e: (lambda lp: lp[:, t] - lp[:, f])(
                    lm.model(inputs_embeds=e).logits[:, -1].log_softmax(-1)
                )
            ),
            "loop over the batch": _ld_loop,
            "base model, then unembed": _ld_base_model,
        },
        {
            "probability difference": (lambda lm, t, f: _ld(lm, t, f, kind="prob"), "probabil"),
            "wrong sign": (lambda lm, t, f: _ld(lm, f, t), "Wrong sign"),
            "second-to-last position": (lambda lm, t, f: _ld(lm, t, f, position=-2), "LAST"),
            "first position": (lambda lm, t, f: _ld(lm, t, f, position=0), "not 0"),
            "target logit only": (
                lambda lm, t, f: lambda e: lm.model(inputs_embeds=e).logits[:, -1, t],
                "Subtract the foil",
            ),
            "without the final norm": (_ld_without_final_norm, "final norm"),
            "wrapped in no_grad": (lambda lm, t, f: _ld(lm, t, f, grad=False), "no_grad"),
            "detached": (lambda lm, t, f: lambda e: _ld(lm, t, f)(e).detach(), "no_grad"),
            "computes once, ignores its input": (Fresh(_ld_cached_factory), "ignores its input"),
        },
    ),
    "deletion_curve": (
        checks.check_deletion_curve,
        {
            "loop": lambda score, ids, order, r: torch.stack(
                [score(_rows(ids, [order[:k].tolist()], r))[0] for k in range(len(order) + 1)]
            ),
            "cumulative masks, float64": lambda score, ids, order, r: score(
                _rows(ids, [order[:k].tolist() for k in range(len(order) + 1)], r)
            ).double(),
        },
        {
            "deletion instead of replacement": (
                lambda score, ids, order, r: torch.stack(
                    [score(_delete(ids, order[:k].tolist()))[0] for k in range(len(order) + 1)]
                ),
                "You deleted",
            ),
            "no starting point": (
                lambda score, ids, order, r: score(
                    _rows(ids, [order[:k].tolist() for k in range(1, len(order) + 2)], r)
                ),
                "original score",
            ),
            "one token at a time": (
                lambda score, ids, order, r: score(_rows(ids, [[]] + [[int(p)] for p in order], r)),
                "cumulatively",
            ),
            "reversed order": (
                lambda score, ids, order, r: score(
                    _rows(ids, [order.flip(0)[:k].tolist() for k in range(len(order) + 1)], r)
                ),
                "from its start",
            ),
            "sum of one-token drops": (
                lambda score, ids, order, r: (
                    score(ids)[0]
                    - torch.cat(
                        [
                            torch.zeros(1),
                            _occlusion_rows(score, ids, [[int(p)] for p in order], r).cumsum(0),
                        ]
                    )
                ),
                "not additive",
            ),
            "sorted order": (
                lambda score, ids, order, r: score(
                    _rows(ids, [order.sort().values[:k].tolist() for k in range(len(order) + 1)], r)
                ),
                "do not sort",
            ),
            "writes into the tokens": (
                lambda score, ids, order, r: torch.stack(
                    [score(ids)[0]]
                    + [(ids.__setitem__((0, int(p)), r), score(ids)[0])[1] for p in order]
                ),
                "changed its input",
            ),
        },
    ),
    "insertion_curve": (
        checks.check_insertion_curve,
        {
            "loop": lambda score, ids, order, r: torch.stack(
                [score(_rows(ids, [order[k:].tolist()], r))[0] for k in range(len(order) + 1)]
            ),
            "put tokens back one by one": lambda score, ids, order, r: torch.stack(
                [
                    score(row)[0]
                    for row in itertools.accumulate(
                        [int(p) for p in order],
                        lambda row, p: row.index_put(
                            (torch.tensor([0]), torch.tensor([p])), ids[0, p : p + 1]
                        ),
                        initial=_rows(ids, [order.tolist()], r),
                    )
                ]
            ),
        },
        {
            "returns the deletion curve": (
                lambda score, ids, order, r: score(
                    _rows(ids, [order[:k].tolist() for k in range(len(order) + 1)], r)
                ),
                "deletion curve",
            ),
            "reversed deletion curve": (
                lambda score, ids, order, r: score(
                    _rows(ids, [order[:k].tolist() for k in range(len(order) + 1)], r)
                ).flip(0),
                "LAST tokens",
            ),
            "off by one (first token already in)": (
                lambda score, ids, order, r: score(
                    _rows(ids, [order[k + 1 :].tolist() for k in range(len(order) + 1)], r)
                ),
                "Off by one",
            ),
            "writes into the tokens": (
                lambda score, ids, order, r: torch.stack(
                    [
                        (ids.__setitem__((0, order[k:]), r), score(ids)[0])[1]
                        for k in range(len(order) + 1)
                    ]
                ),
                "changed its input",
            ),
            "replaces every position at the start": (
                lambda score, ids, order, r: score(
                    _rows(
                        ids,
                        [
                            [p for p in range(ids.shape[1]) if p not in order[:k].tolist()]
                            for k in range(len(order) + 1)
                        ],
                        r,
                    )
                ),
                "only the positions",
            ),
            "sum of one-token gains": (
                lambda score, ids, order, r: (
                    lambda start: (
                        start
                        + torch.cat(
                            [
                                torch.zeros(1),
                                (
                                    score(
                                        _rows(
                                            ids,
                                            [
                                                [q for q in order.tolist() if q != p]
                                                for p in order.tolist()
                                            ],
                                            r,
                                        )
                                    )
                                    - start
                                ).cumsum(0),
                            ]
                        )
                    )
                )(score(_rows(ids, [order.tolist()], r))[0]),
                "not additive",
            ),
        },
    ),
    "spearman": (
        checks.check_spearman,
        {
            "1 - 6 sum d^2 / n(n^2-1)": _spearman_d2,
            "torch.corrcoef of ranks": lambda a, b: _corr(
                a.argsort().argsort(), b.argsort().argsort()
            ),
            "plain Python, ranks from 1": _spearman_python,
        },
        {
            "Pearson on values": (lambda a, b: _corr(a, b), "VALUES"),
            "argsort once": (lambda a, b: _corr(a.argsort(), b.argsort()), "apply argsort twice"),
            "absolute value": (lambda a, b: abs(_spearman_d2(a, b)), "Keep the sign"),
            "ranks of one, values of the other": (
                lambda a, b: _corr(a.argsort().argsort(), b),
                "Rank BOTH",
            ),
            "opposite directions": (
                lambda a, b: _corr(a.argsort().argsort(), (-b).argsort().argsort()),
                "same direction",
            ),
            "sorted values": (lambda a, b: _corr(a.sort().values, b.sort().values), "Do not sort"),
            "values of one, ranks of the other": (
                lambda a, b: _corr(a, b.argsort().argsort()),
                "Rank BOTH",
            ),
        },
    ),
    "randomize_weights_": (
        checks.check_randomize_weights,
        {
            "normal_ with a generator": _randomize_normal_,
            "via the state_dict": _randomize_state_dict,
            "float64 draws": _randomize_float64,
        },
        {
            "zeroes the weights": (
                lambda m, seed=0: [p.data.zero_() for p in m.parameters()],
                "own mean",
            ),
            "standard normal": (
                lambda m, seed=0: [
                    p.data.copy_(
                        torch.randn(p.shape, generator=torch.Generator().manual_seed(seed))
                    )
                    for p in m.parameters()
                ],
                "own mean",
            ),
            "global random state": (
                lambda m, seed=0: [
                    p.data.normal_(p.data.mean().item(), p.data.std().item())
                    for p in m.parameters()
                ],
                "torch.Generator",
            ),
            "torch.manual_seed": (_randomize_manual_seed, "torch.manual_seed would reset"),
            "not in place": (_randomize_copy, "No parameter changed"),
            "weights only, biases kept": (
                lambda m, seed=0: [
                    p.data.normal_(
                        p.data.mean().item(),
                        p.data.std().item(),
                        generator=torch.Generator().manual_seed(seed),
                    )
                    for n, p in m.named_parameters()
                    if n.endswith("weight")
                ],
                "did not change",
            ),
            "skips frozen parameters": (
                lambda m, seed=0: _randomize(m, seed, skip_frozen=True),
                "if p.requires_grad",
            ),
            "reseeded for every parameter": (
                lambda m, seed=0: _randomize(m, seed, reseed=True),
                "reseeding",
            ),
            "uniform noise": (lambda m, seed=0: _randomize(m, seed, dist="uniform"), "uniform"),
            "permutes the values": (_randomize_shuffle, "another order"),
            "the whole module's mean and std": (
                lambda m, seed=0: _randomize(m, seed, scope="module"),
                "THIS parameter",
            ),
            "new Parameter objects": (_randomize_new_parameters, "replaced by new objects"),
        },
    ),
    "layer_attribution": (
        checks.check_layer_attribution,
        {
            "output_hidden_states[:-1]": _layer_hidden_states,
            "one layer at a time, float64": _layer_loop,
        },
        {
            "block outputs (resid_post)": (_layer_variant(site="resid_post"), "Off by one layer"),
            "hidden_states[1:]": (_layer_hidden_outputs, "hidden_states[1:]"),
            "wrong sign": (_layer_variant(sign=-1.0), "Wrong sign"),
            "gradient norm": (_layer_variant(reduce="norm"), "saliency"),
            "gradient alone": (_layer_variant(reduce="g"), "before summing"),
            "hooks left on the model": (_layer_leaky_hooks, "hook(s) registered"),
        },
    ),
    "shapley_values": (
        checks.check_shapley_values,
        {
            "every permutation": _shapley_permutations,
            "coalitions, float64": _shapley_weighted(_w_shapley),
        },
        {
            "Banzhaf weights": (_shapley_weighted(lambda s, n: 1 / 2 ** (n - 1)), "Banzhaf"),
            "occlusion": (
                lambda score, ids, pos, r: _occlusion_rows(score, ids, [[int(p)] for p in pos], r),
                "That is occlusion",
            ),
            "leave one in": (
                lambda score, ids, pos, r: (
                    score(
                        _rows(ids, [[q for q in pos.tolist() if q != p] for p in pos.tolist()], r)
                    )
                    - score(_rows(ids, [pos.tolist()], r))[0]
                ),
                "empty coalition",
            ),
            "average of the two ends": (_shapley_endpoints, "three or more"),
            "wrong sign": (
                lambda score, ids, pos, r: -_shapley_weighted(_w_shapley)(score, ids, pos, r),
                "Wrong sign",
            ),
            "weight s! (n - s)! / n!": (
                _shapley_weighted(lambda s, n: factorial(s) * factorial(n - s) / factorial(n)),
                "n - s - 1",
            ),
            "six sampled permutations": (_shapley_sampled, "every coalition"),
            "sorted by position": (_shapley_sorted, "order of `positions`"),
        },
    ),
}


def test_every_exercise_has_cases() -> None:
    assert set(CASES) == set(CELLS) == set(checks.EXERCISES), "every exercise needs tests"
    assert {c.__name__ for c, _, _ in CASES.values()} == {
        name for name in checks.__all__ if name.startswith("check_")
    }
    for name, (check, correct, wrong) in CASES.items():
        assert checks.EXERCISES[name] is check
        assert len(correct) >= 2 and len(wrong) >= 6, name


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_passes_the_solution(name: str) -> None:
    result = CASES[name][0](solution(name), quiet=True)
    assert result.passed and result.score == result.max_score, result.messages


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_reports_the_stub_as_not_attempted(name: str) -> None:
    result = CASES[name][0](stub(name), quiet=True)
    assert not result.attempted and not result.passed and result.score == 0


@pytest.mark.parametrize(
    ("name", "variant"), [(n, v) for n, (_, ok, _) in CASES.items() for v in ok]
)
def test_check_accepts_correct_alternatives(name: str, variant: str) -> None:
    check, correct, _ = CASES[name]
    result = check(correct[variant], quiet=True)
    assert result.passed, result.messages


@pytest.mark.parametrize(
    ("name", "variant"), [(n, v) for n, (_, _, bad) in CASES.items() for v in bad]
)
def test_check_rejects_plausible_mistakes_by_name(name: str, variant: str) -> None:
    check, _, wrong = CASES[name]
    implementation, named = wrong[variant]
    result = check(_fn(implementation), quiet=True)
    assert result.attempted and not result.passed, f"{variant} was accepted"
    text = "\n".join(result.messages)
    assert named in text, f"{variant}: the message does not name the mistake:\n{text}"
    assert "BEGIN SOLUTION" not in text and "def " not in text


def _run(check, fn, variant: int, runner=None):
    return run_check(
        check.body,
        check.check_name,
        check.points,
        fn,
        variant=variant,
        runner=runner,
        timeout=check.timeout,
    )


@pytest.mark.parametrize("variant", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(CASES))
def test_hidden_variants_pass_right_answers(name: str, variant: int) -> None:
    check, correct, _ = CASES[name]
    for label, fn in [("solution", solution(name)), *correct.items()]:
        result = _run(check, fn, variant)
        assert result.passed, f"{label}, variant {variant}: {result.messages}"


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_hidden_variants_fail_wrong_answers(name: str, variant: int) -> None:
    check, _, wrong = CASES[name]
    for label, (implementation, _) in wrong.items():
        result = _run(check, _fn(implementation), variant)
        assert result.attempted and not result.passed, f"{label} passed variant {variant}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_recorded_run_replays_to_the_same_result(name: str) -> None:
    """The grader records the student's outcomes in a sandbox and replays them elsewhere."""
    check, _, wrong = CASES[name]
    first_wrong = _fn(next(iter(wrong.values()))[0])
    for fn in (solution(name), first_wrong):
        recorder = Recorder()
        live = _run(check, fn, 1, recorder)
        replayed = _run(check, lambda *a, **k: None, 1, Replayer(recorder.outcomes))
        assert (replayed.passed, replayed.score) == (live.passed, live.score), replayed.messages


def test_failure_message_says_what_and_where(capsys) -> None:
    checks.check_input_x_gradient(lambda f, x: -(x * grad_of(f, x))[0].sum(-1))
    out = capsys.readouterr().out
    assert "[failed]" in out and "First mismatch" in out and "tolerance" in out and "Hint" in out


def test_success_prints_one_line(capsys) -> None:
    checks.check_spearman(_spearman_d2)
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "[passed]" in out
