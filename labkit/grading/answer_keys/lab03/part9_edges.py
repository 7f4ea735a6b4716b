"""Lab 03, part 9 (exercise 3.14): edge attribution patching's references and mistakes."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.grading.answer_keys.lab03.key import KEY, NotThisProblem
from labkit.grading.answer_keys.lab03.shared import _acts_grads, _chunks, _head_vectors, _run_cache


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
            scores = (
                (send * torch.stack(own)).sum((-1, -2, -3))[:, None].expand(-1, 2 * n_layers + 1)
            )
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
