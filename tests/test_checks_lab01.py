"""Each lab 01 check passes the solution and other correct implementations, and fails the stub
and plausible mistakes.

The solution functions are taken from solutions/01_attribution.ipynb itself (the cells that
define an exercise), and the stubs from the student version that ``labkit build`` writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nbformat
import networkx as nx
import pytest
import torch
from torch import Tensor

import labkit
from labkit.build import strip_code_solution
from labkit.checks import lab01 as checks

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


def grad_of(f: Callable, x: Tensor) -> Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    return g


def ig_rule(f, x, b, n, rule: str) -> Tensor:
    """IG with a chosen quadrature, one alpha at a time (a looped implementation)."""
    if rule == "right":
        alphas, weights = [(k + 1) / n for k in range(n)], [1 / n] * n
    elif rule == "trapezoid":
        alphas = [k / (n - 1) for k in range(n)]
        weights = [0.5 / (n - 1)] + [1 / (n - 1)] * (n - 2) + [0.5 / (n - 1)]
    total = torch.zeros_like(x)
    for alpha, weight in zip(alphas, weights, strict=True):
        total += weight * grad_of(f, b + alpha * (x - b))
    return ((x - b) * total)[0].sum(-1)


def _rollout_variant(attentions, residual=True, order="left", reduce="mean") -> Tensor:
    n = attentions.shape[-1]
    eye = torch.eye(n)
    out = eye
    for layer in attentions:
        a = layer.mean(0) if reduce == "mean" else layer.max(0).values
        if residual:
            a = 0.5 * a + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        out = a @ out if order == "left" else out @ a
    return out


def _flow_variant(attentions, target=-1, residual=True, reverse=False, reduce="mean"):
    n_layers, _, n, _ = attentions.shape
    graph = nx.DiGraph()
    for layer in range(n_layers):
        a = attentions[layer].mean(0) if reduce == "mean" else attentions[layer].sum(0)
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(n)
        for i in range(n):
            for j in range(n):
                i_, j_ = (j, i) if reverse else (i, j)
                graph.add_edge((layer, j), (layer + 1, i), capacity=float(a[i_, j_]))
    sink = (n_layers, target % n)
    return torch.tensor([nx.maximum_flow_value(graph, (0, j), sink) for j in range(n)])


def _flow_lp_free(attentions, target=-1) -> Tensor:
    """Correct flow via networkx's Edmonds-Karp on a graph that skips zero-capacity edges."""
    from networkx.algorithms.flow import edmonds_karp

    n_layers, _, n, _ = attentions.shape
    graph = nx.DiGraph()
    graph.add_nodes_from((layer, i) for layer in range(n_layers + 1) for i in range(n))
    for layer in range(n_layers):
        a = 0.5 * attentions[layer].mean(0) + 0.5 * torch.eye(n)
        a = a / a.sum(-1, keepdim=True)
        for i, j in zip(*torch.nonzero(a, as_tuple=True), strict=True):
            graph.add_edge((layer, int(j)), (layer + 1, int(i)), capacity=float(a[i, j]))
    sink = (n_layers, target % n)
    return torch.tensor(
        [nx.maximum_flow_value(graph, (0, j), sink, flow_func=edmonds_karp) for j in range(n)]
    )


def _replace_batch(tokens: Tensor, masks: list[Tensor], replacement_id: int) -> Tensor:
    batch = tokens.repeat(len(masks), 1)
    for row, mask in enumerate(masks):
        batch[row, mask] = replacement_id
    return batch


def _spearman_via_d2(a: Tensor, b: Tensor) -> float:
    n = len(a)
    ra = torch.empty(n)
    ra[a.argsort()] = torch.arange(n, dtype=torch.float)
    rb = torch.empty(n)
    rb[b.argsort()] = torch.arange(n, dtype=torch.float)
    return float(1 - 6 * ((ra - rb) ** 2).sum() / (n * (n**2 - 1)))


def _randomize_loop(module, seed=0):
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


def _ld_logsoftmax(lm, target_id, foil_id):
    def f(embeddings):
        logp = lm.model(inputs_embeds=embeddings).logits[:, -1].log_softmax(-1)
        return logp[:, target_id] - logp[:, foil_id]

    return f


def _ld_loop(lm, target_id, foil_id):
    def f(embeddings):
        rows = []
        for e in embeddings:
            logits = lm.model(inputs_embeds=e[None]).logits[0, -1]
            rows.append(logits[target_id] - logits[foil_id])
        return torch.stack(rows)

    return f


def _avg_grad(f, x, b, n):
    total = torch.zeros_like(x)
    for k in range(n):
        total += grad_of(f, b + (k + 0.5) / n * (x - b)) / n
    return total


def _insertion_put_back(score, ids, order, r):
    row = ids.clone()
    row[0, order] = r
    rows = [row.clone()]
    for position in order:
        row[0, position] = ids[0, position]
        rows.append(row.clone())
    return score(torch.cat(rows))


def _rollout_no_renorm(a):
    out = torch.eye(a.shape[-1])
    for layer in a:
        out = (0.5 * layer.mean(0) + 0.5 * torch.eye(a.shape[-1])) @ out
    return out


def _rollout_reduce(a):
    from functools import reduce

    mats = [0.5 * layer.mean(0) + 0.5 * torch.eye(a.shape[-1]) for layer in a]
    return reduce(lambda acc, m: m @ acc, mats, torch.eye(a.shape[-1]))


def _randomize_copy(module, seed=0):
    import copy

    clone = copy.deepcopy(module)
    _randomize_loop(clone, seed)
    return clone


# Each entry: exercise -> (check, correct alternatives, wrong implementations).
CASES: dict[str, tuple[Callable, dict[str, Callable], dict[str, Callable]]] = {
    "saliency": (
        checks.check_saliency,
        {
            "loop over positions": lambda f, x: torch.stack(
                [grad_of(f, x)[0, p].pow(2).sum().sqrt() for p in range(x.shape[1])]
            ),
            "linalg.vector_norm": lambda f, x: torch.linalg.vector_norm(grad_of(f, x), dim=-1)[0],
        },
        {
            "signed sum of gradient": lambda f, x: grad_of(f, x)[0].sum(-1),
            "L1 norm": lambda f, x: grad_of(f, x)[0].abs().sum(-1),
            "gradient times input": lambda f, x: (grad_of(f, x) * x)[0].norm(dim=-1),
            "norm over positions": lambda f, x: grad_of(f, x)[0].norm(dim=0),
            "keeps batch dim": lambda f, x: grad_of(f, x).norm(dim=-1),
        },
    ),
    "input_x_gradient": (
        checks.check_input_x_gradient,
        {
            "einsum": lambda f, x: torch.einsum("bpd,bpd->p", x, grad_of(f, x)),
            "loop": lambda f, x: torch.stack(
                [(x[0, p] * grad_of(f, x)[0, p]).sum() for p in range(x.shape[1])]
            ),
        },
        {
            "wrong sign": lambda f, x: -(x * grad_of(f, x))[0].sum(-1),
            "norm instead of sum": lambda f, x: (x * grad_of(f, x))[0].norm(dim=-1),
            "missing input": lambda f, x: grad_of(f, x)[0].sum(-1),
            "abs": lambda f, x: (x * grad_of(f, x))[0].abs().sum(-1),
        },
    ),
    "integrated_gradients": (
        checks.check_integrated_gradients,
        {
            "right Riemann, looped": lambda f, x, b, n: ig_rule(f, x, b, n, "right"),
            "trapezoid, looped": lambda f, x, b, n: ig_rule(f, x, b, n, "trapezoid"),
        },
        {
            "zero baseline instead of the given one": lambda f, x, b, n: ig_rule(
                f, x, torch.zeros_like(x), n, "right"
            ),
            "input instead of input - baseline": lambda f, x, b, n: (x * _avg_grad(f, x, b, n))[
                0
            ].sum(-1),
            "missing 1/n_steps": lambda f, x, b, n: n * ig_rule(f, x, b, n, "right"),
            "gradient only at the input": lambda f, x, b, n: ((x - b) * grad_of(f, x))[0].sum(-1),
            "wrong sign": lambda f, x, b, n: -ig_rule(f, x, b, n, "right"),
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
        },
        {
            "reversed sign": lambda f, x, b, a: float((f(x) - f(b)).sum() - a.sum()),
            "ignores the baseline": lambda f, x, b, a: float(a.sum() - f(x).sum()),
            "absolute value": lambda f, x, b, a: abs(float(a.sum() - (f(x) - f(b)).sum())),
            "relative error": lambda f, x, b, a: float(
                (a.sum() - (f(x) - f(b)).sum()) / (f(x) - f(b)).sum()
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
        },
        {
            "zero baseline": lambda lm, ids: torch.zeros(1, ids.shape[1], lm.d_model),
            "zero except the anchor": lambda lm, ids: torch.cat(
                [lm.embed(ids[:, :1]), torch.zeros(1, ids.shape[1] - 1, lm.d_model)], dim=1
            ).detach(),
            "anchor replaced too": lambda lm, ids: lm.embed(
                torch.full_like(ids, lm.token_id(" "))
            ).detach(),
            "pad token instead of space": lambda lm, ids: lm.embed(
                torch.cat([ids[:, :1], torch.zeros_like(ids[:, 1:])], dim=1)
            ).detach(),
            "token ids, not embeddings": lambda lm, ids: torch.cat(
                [ids[:, :1], torch.full_like(ids[:, 1:], lm.token_id(" "))], dim=1
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
        },
        {
            "column instead of row": lambda a, w: (w / w.sum()) @ a[:, :, :, -1].mean(1),
            "first row": lambda a, w: (w / w.sum()) @ a[:, :, 0].mean(1),
            "sum over heads": lambda a, w: (w / w.sum()) @ a[:, :, -1].sum(1),
            "weights not normalised": lambda a, w: w @ a[:, :, -1].mean(1),
        },
    ),
    "attention_rollout": (
        checks.check_attention_rollout,
        {
            "loop without renormalising": lambda a: _rollout_no_renorm(a),
            "functools.reduce": lambda a: _rollout_reduce(a),
        },
        {
            "no residual identity": lambda a: _rollout_variant(a, residual=False),
            "wrong multiplication order": lambda a: _rollout_variant(a, order="right"),
            "max over heads": lambda a: _rollout_variant(a, reduce="max"),
            "columns normalised": lambda a: _rollout_variant(a).T,
        },
    ),
    "attention_flow": (
        checks.check_attention_flow,
        {
            "dense graph, no renormalisation": lambda a, target=-1: _flow_variant(a, target),
            "Edmonds-Karp, sparse graph": _flow_lp_free,
        },
        {
            "no residual": lambda a, target=-1: _flow_variant(a, target, residual=False),
            "rollout instead of flow": lambda a, target=-1: _rollout_variant(a)[target],
            "edges reversed": lambda a, target=-1: _flow_variant(a, target, reverse=True),
            "heads summed": lambda a, target=-1: _flow_variant(a, target, reduce="sum"),
        },
    ),
    "occlusion": (
        checks.check_occlusion,
        {
            "loop": lambda score, ids, r: torch.stack(
                [
                    score(ids)[0] - score(_replace_batch(ids, [torch.tensor([i])], r))[0]
                    for i in range(ids.shape[1])
                ]
            ),
            "masked_fill": lambda score, ids, r: (
                score(ids)[0]
                - score(ids.repeat(ids.shape[1], 1).masked_fill(torch.eye(ids.shape[1]).bool(), r))
            ),
        },
        {
            "deletion instead of replacement": lambda score, ids, r: torch.stack(
                [
                    score(ids)[0] - score(torch.cat([ids[:, :i], ids[:, i + 1 :]], 1))[0]
                    for i in range(ids.shape[1])
                ]
            ),
            "wrong sign": lambda score, ids, r: (
                score(ids.repeat(ids.shape[1], 1).masked_fill(torch.eye(ids.shape[1]).bool(), r))
                - score(ids)[0]
            ),
            "off by one position": lambda score, ids, r: (
                score(ids)[0]
                - score(
                    ids.repeat(ids.shape[1], 1).masked_fill(
                        torch.eye(ids.shape[1]).roll(1, dims=1).bool(), r
                    )
                )
            ),
            "replaces with token 0 always": lambda score, ids, r: (
                score(ids)[0]
                - score(ids.repeat(ids.shape[1], 1).masked_fill(torch.eye(ids.shape[1]).bool(), 0))
            ),
            "keeps only token i": lambda score, ids, r: (
                score(ids)[0]
                - score(ids.repeat(ids.shape[1], 1).masked_fill(~torch.eye(ids.shape[1]).bool(), r))
            ),
        },
    ),
    "logit_difference_fn": (
        checks.check_logit_difference_fn,
        {"log-softmax difference": _ld_logsoftmax, "loop over the batch": _ld_loop},
        {
            "probability difference": lambda lm, t, f: (
                lambda e: (
                    lm.model(inputs_embeds=e).logits[:, -1].softmax(-1)[:, [t, f]]
                    @ torch.tensor([1.0, -1.0])
                )
            ),
            "wrong sign": lambda lm, t, f: (
                lambda e: (
                    lm.model(inputs_embeds=e).logits[:, -1, f]
                    - lm.model(inputs_embeds=e).logits[:, -1, t]
                )
            ),
            "second-to-last position": lambda lm, t, f: (
                lambda e: (
                    lm.model(inputs_embeds=e).logits[:, -2, t]
                    - lm.model(inputs_embeds=e).logits[:, -2, f]
                )
            ),
            "target logit only": lambda lm, t, f: (
                lambda e: lm.model(inputs_embeds=e).logits[:, -1, t]
            ),
        },
    ),
    "deletion_curve": (
        checks.check_deletion_curve,
        {
            "loop": lambda score, ids, order, r: torch.stack(
                [
                    score(_replace_batch(ids, [torch.as_tensor(order)[:k]], r))[0]
                    for k in range(len(order) + 1)
                ]
            ),
            "cumulative masks": lambda score, ids, order, r: score(
                _replace_batch(
                    ids, [torch.as_tensor(order[:k], dtype=torch.long) for k in range(5)], r
                )
            ),
        },
        {
            "deletion instead of replacement": lambda score, ids, order, r: torch.stack(
                [
                    score(ids[:, [i for i in range(ids.shape[1]) if i not in order[:k].tolist()]])[
                        0
                    ]
                    for k in range(len(order) + 1)
                ]
            ),
            "no starting point": lambda score, ids, order, r: score(
                _replace_batch(ids, [order[:k] for k in range(1, len(order) + 1)], r)
            ),
            "one token at a time": lambda score, ids, order, r: score(
                _replace_batch(ids, [order[:0]] + [order[k : k + 1] for k in range(len(order))], r)
            ),
            "reversed order": lambda score, ids, order, r: score(
                _replace_batch(ids, [order.flip(0)[:k] for k in range(len(order) + 1)], r)
            ),
        },
    ),
    "insertion_curve": (
        checks.check_insertion_curve,
        {
            "loop": lambda score, ids, order, r: torch.stack(
                [
                    score(_replace_batch(ids, [torch.as_tensor(order)[k:]], r))[0]
                    for k in range(len(order) + 1)
                ]
            ),
            "put tokens back one by one": _insertion_put_back,
        },
        {
            "returns the deletion curve": lambda score, ids, order, r: score(
                _replace_batch(ids, [order[:k] for k in range(len(order) + 1)], r)
            ),
            "reversed": lambda score, ids, order, r: score(
                _replace_batch(ids, [order[k:] for k in range(len(order) + 1)], r)
            ).flip(0),
            "off by one (first token already in)": lambda score, ids, order, r: score(
                _replace_batch(ids, [order[k + 1 :] for k in range(len(order) + 1)], r)
            ),
            "inserts the last tokens first": lambda score, ids, order, r: score(
                _replace_batch(ids, [order[: len(order) - k] for k in range(len(order) + 1)], r)
            ),
        },
    ),
    "spearman": (
        checks.check_spearman,
        {
            "1 - 6 sum d^2 / n(n^2-1)": _spearman_via_d2,
            "torch.corrcoef of ranks": lambda a, b: float(
                torch.corrcoef(
                    torch.stack([a.argsort().argsort().float(), b.argsort().argsort().float()])
                )[0, 1]
            ),
        },
        {
            "Pearson on values": lambda a, b: float(torch.corrcoef(torch.stack([a, b]))[0, 1]),
            "argsort once": lambda a, b: float(
                torch.corrcoef(torch.stack([a.argsort().float(), b.argsort().float()]))[0, 1]
            ),
            "absolute value": lambda a, b: abs(_spearman_via_d2(a, b)),
            "ranks of one, values of the other": lambda a, b: float(
                torch.corrcoef(torch.stack([a.argsort().argsort().float(), b]))[0, 1]
            ),
        },
    ),
    "randomize_weights_": (
        checks.check_randomize_weights,
        {"normal_ with a generator": _randomize_loop, "via state_dict": _randomize_state_dict},
        {
            "zeroes the weights": lambda m, seed=0: [p.data.zero_() for p in m.parameters()],
            "standard normal": lambda m, seed=0: [
                p.data.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
                for p in m.parameters()
            ],
            "global random state": lambda m, seed=0: [
                p.data.normal_(p.data.mean().item(), p.data.std().item()) for p in m.parameters()
            ],
            "not in place": lambda m, seed=0: _randomize_copy(m, seed),
            "weights only, biases kept": lambda m, seed=0: [
                p.data.normal_(
                    p.data.mean().item(),
                    p.data.std().item(),
                    generator=torch.Generator().manual_seed(seed),
                )
                for n, p in m.named_parameters()
                if n.endswith("weight")
            ],
        },
    ),
}


def test_every_exercise_has_cases() -> None:
    assert set(CASES) == set(CELLS), "every exercise in the solution notebook needs tests"
    assert {c.__name__ for c, _, _ in CASES.values()} == {
        name for name in checks.__all__ if name.startswith("check_")
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_passes_the_solution(name: str) -> None:
    result = CASES[name][0](solution(name), quiet=True)
    assert result.passed, result.messages


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_reports_the_stub_as_not_attempted(name: str) -> None:
    result = CASES[name][0](stub(name), quiet=True)
    assert not result.attempted and not result.passed and result.score == 0


@pytest.mark.parametrize(
    ("name", "variant"), [(n, v) for n, (_, ok, _) in CASES.items() for v in ok]
)
def test_check_accepts_correct_alternatives(name: str, variant: str) -> None:
    check, correct, _ = CASES[name]
    assert len(correct) >= 2
    result = check(correct[variant], quiet=True)
    assert result.passed, result.messages


@pytest.mark.parametrize(
    ("name", "variant"), [(n, v) for n, (_, _, bad) in CASES.items() for v in bad]
)
def test_check_rejects_plausible_mistakes(name: str, variant: str) -> None:
    check, _, wrong = CASES[name]
    assert len(wrong) >= 3
    result = check(wrong[variant], quiet=True)
    assert result.attempted and not result.passed, f"{variant} was accepted"
    text = "\n".join(result.messages)
    assert "Tested:" in text or "raised" in text
    assert "BEGIN SOLUTION" not in text and "def " not in text


def test_failure_message_says_what_and_where(capsys) -> None:
    CASES["input_x_gradient"][2]["wrong sign"]  # noqa: B018 - documents the case used
    checks.check_input_x_gradient(lambda f, x: -(x * grad_of(f, x))[0].sum(-1))
    out = capsys.readouterr().out
    assert "[failed]" in out and "First mismatch" in out and "tolerance" in out and "Hint" in out


def test_success_prints_one_line(capsys) -> None:
    checks.check_spearman(_spearman_via_d2)
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "[passed]" in out
