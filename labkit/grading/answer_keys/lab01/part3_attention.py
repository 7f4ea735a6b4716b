"""Part 3: the mistakes of layer-weighted attention, rollout and flow."""

from __future__ import annotations

import torch

from labkit.grading.answer_keys.lab01.key import KEY


# ----- Exercise 1.7: layer-weighted attention ----------------------------------------------------
def _lwa(a, w, row=-1, reduce="mean", norm="sum", column=False):
    picked = a[:, :, :, row] if column else a[:, :, row]  # (layers, heads, pos)
    heads = {"mean": picked.mean(1), "sum": picked.sum(1), "max": picked.amax(1)}[reduce]
    w = w.to(heads.dtype)
    weights = {"sum": w / w.sum(), "none": w, "softmax": w.softmax(0), "max": w / w.max()}[norm]
    return weights @ heads


def _lwa_mistake(hint: str, **how) -> None:
    @KEY.mistake("layer_weighted_attention", hint)
    def mistake(sol, attentions, layer_weights):
        return _lwa(attentions, layer_weights, **how)


_lwa_mistake(
    "You read the last COLUMN; read the last row, attentions[:, :, -1, :] (how the last "
    "position attends).",
    column=True,
)
_lwa_mistake("You read the first row; the last position (-1) predicts the next token.", row=0)
_lwa_mistake("Average over heads, do not sum.", reduce="sum")
_lwa_mistake("Average over heads, do not take the max.", reduce="max")
_lwa_mistake("Normalise the layer weights to sum to one.", norm="none")
_lwa_mistake("Normalise by dividing by the sum, not with a softmax.", norm="softmax")
_lwa_mistake("Divide the weights by their SUM, not by the largest one.", norm="max")


@KEY.mistake("layer_weighted_attention", "Use the layer weights: this is the plain mean.")
def lwa_plain_mean(sol, attentions, layer_weights):
    return attentions[:, :, -1].mean((0, 1))


@KEY.mistake("layer_weighted_attention", "Weight every layer: you used the last layer only.")
def lwa_last_layer(sol, attentions, layer_weights):
    return attentions[-1, :, -1].mean(0)


@KEY.mistake(
    "layer_weighted_attention",
    "Keep every position: you left out position 0 (the anchor) and renormalised the rest.",
)
def lwa_without_anchor(sol, attentions, layer_weights):
    out = sol.layer_weighted_attention(attentions, layer_weights).clone()
    out[0] = 0.0
    return out / out.sum()


# ----- Exercise 1.8: attention rollout -----------------------------------------------------------
def mixed(a, reduce="mean", residual=0.5, renormalise="after"):
    """Each layer's A_hat (pos, pos), with variations for the mistakes."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    out = []
    for layer in a:
        m = {"mean": layer.mean(0), "sum": layer.sum(0), "max": layer.amax(0)}[reduce]
        if renormalise == "before":
            m = m / m.sum(-1, keepdim=True)
        m = (1 - residual) * m + residual * eye
        if renormalise == "after":
            m = m / m.sum(-1, keepdim=True)
        out.append(m)
    return out


def rolled(mats, left=True):
    out = torch.eye(mats[0].shape[-1], dtype=mats[0].dtype)
    for m in mats:
        out = m @ out if left else out @ m
    return out


def _rollout_mistake(hint: str, make) -> None:
    @KEY.mistake("attention_rollout", hint)
    def mistake(sol, attentions):
        return make(attentions)


_rollout_mistake(
    "Mix in the residual: A_hat = 0.5 * A + 0.5 * I for every layer.",
    lambda a: rolled(mixed(a, residual=0.0)),
)
_rollout_mistake(
    "Later layers multiply on the LEFT: R = A_hat_L @ ... @ A_hat_1 (you computed "
    "A_hat_1 @ ... @ A_hat_L).",
    lambda a: rolled(mixed(a), left=False),
)
_rollout_mistake("Average over heads, not max.", lambda a: rolled(mixed(a, reduce="max")))
_rollout_mistake("Average over heads, do not sum them.", lambda a: rolled(mixed(a, reduce="sum")))
_rollout_mistake(
    "You returned the transpose: row i should be position i at the top.",
    lambda a: rolled(mixed(a)).T,
)
_rollout_mistake(
    "Average the heads BEFORE multiplying the layers: you rolled out each head separately and "
    "averaged the results.",
    lambda a: torch.stack([rolled(mixed(a[:, h : h + 1])) for h in range(a.shape[1])]).mean(0),
)
_rollout_mistake(
    "Multiply the layers together: you returned the last layer only.", lambda a: mixed(a)[-1]
)
_rollout_mistake(
    "Multiply every layer: you left out the last one.", lambda a: rolled(mixed(a)[:-1])
)
_rollout_mistake("Multiply the layers, do not average them.", lambda a: sum(mixed(a)) / a.shape[0])
_rollout_mistake(
    "Renormalise each layer's A_hat so its rows sum to one (they do not here).",
    lambda a: rolled(mixed(a, renormalise="none")),
)
_rollout_mistake(
    "Renormalise AFTER mixing in the identity: A_hat = 0.5 * A + 0.5 * I, then divide each row "
    "by its sum.",
    lambda a: rolled(mixed(a, renormalise="before")),
)


# ----- Exercise 1.9: attention flow --------------------------------------------------------------
def flow(mats, target: int = -1, transpose: bool = False, wrap: bool = True) -> torch.Tensor:
    """Max flow from each input token to (top, target) through capacities mats[l][i, j]."""
    import networkx as nx

    n = mats[0].shape[-1]
    graph = nx.DiGraph()
    for layer, a in enumerate(mats):
        a = a.T if transpose else a
        for i in range(n):
            for j in range(n):
                if a[i, j] > 0:
                    graph.add_edge((layer, j), (layer + 1, i), capacity=float(a[i, j]))
    sink = (len(mats), target % n if wrap else target)
    values = []
    for j in range(n):
        reachable = graph.has_node((0, j)) and graph.has_node(sink)
        if reachable and nx.has_path(graph, (0, j), sink):
            values.append(nx.maximum_flow_value(graph, (0, j), sink))
        else:
            values.append(0.0)
    return torch.tensor(values, dtype=torch.float64)


def widest_path(mats, target: int = -1) -> torch.Tensor:
    """The bottleneck of the widest single path from each token (not a max flow)."""
    n = mats[0].shape[-1]
    width = torch.zeros(n, n, dtype=mats[0].dtype)
    width.fill_diagonal_(float("inf"))
    for a in mats:
        width = torch.minimum(width[:, None, :], a[None, :, :]).amax(-1)
    return width[:, target % n]


def _flow_mistake(hint: str, make) -> None:
    @KEY.mistake("attention_flow", hint)
    def mistake(sol, attentions, target=-1):
        return make(attentions, target)


_flow_mistake(
    "That is the widest single path (its narrowest edge); the max flow adds up every path, e.g. "
    "nx.maximum_flow_value.",
    lambda a, t: widest_path(mixed(a), t),
)
_flow_mistake(
    "That is rollout's row: flow is a max-flow value, not a product of matrices.",
    lambda a, t: rolled(mixed(a))[t],
)
_flow_mistake(
    "Mix in the residual: capacities 0.5 * A + 0.5 * I.", lambda a, t: flow(mixed(a, residual=0), t)
)
_flow_mistake(
    "Edges point the wrong way: the edge from token j (layer l) to token i (layer l+1) has "
    "capacity A_hat[i, j].",
    lambda a, t: flow(mixed(a), t, transpose=True),
)
_flow_mistake("Average over heads, do not sum them.", lambda a, t: flow(mixed(a, reduce="sum"), t))
_flow_mistake("Average over heads, not max.", lambda a, t: flow(mixed(a, reduce="max"), t))


@KEY.mistake(
    "attention_flow",
    "Use the `target` argument: flow into (top layer, target), not always into the last position.",
)
def flow_ignores_target(sol, attentions, target=-1):
    if target % attentions.shape[-1] == attentions.shape[-1] - 1:
        raise ValueError("the target is the last position: nothing to tell apart")
    return flow(mixed(attentions), -1)


_flow_mistake(
    "Renormalise each layer's A_hat so its rows sum to one (they do not here).",
    lambda a, t: flow(mixed(a, renormalise="none"), t),
)
_flow_mistake(
    "Renormalise AFTER mixing in the identity.",
    lambda a, t: flow(mixed(a, renormalise="before"), t),
)


@KEY.mistake(
    "attention_flow",
    "A negative target counts from the end: the sink is (n_layers, target % pos); the node "
    "(n_layers, -1) is not in your graph, so every flow came out 0.",
)
def flow_negative_sink(sol, attentions, target=-1):
    if target >= 0:
        raise ValueError("a non-negative target")
    return torch.zeros(attentions.shape[-1], dtype=torch.float64)


_flow_mistake(
    "Use every layer: your graph has the first layer's edges only.",
    lambda a, t: flow(mixed(a)[:1], t),
)
