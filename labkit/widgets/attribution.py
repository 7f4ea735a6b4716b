"""Lab 01's explorer: pick a prompt, a target token and an attribution method, see the scores.

Methods are plain functions ``method(lm, tokens, target_id) -> scores``, with ``tokens`` of shape
(1, pos) and ``scores`` of shape (pos,): the lab wraps the student's own functions this way, and
:func:`inseq_method` wraps inseq's. The explorer only draws; it implements no method itself.

>>> methods = {"my saliency": my_saliency, "inseq IG": inseq_method("integrated_gradients")}
>>> explorer = AttributionExplorer(lm, methods)
>>> explorer  # in a notebook: the controls and a coloured-text heatmap
"""

from __future__ import annotations

import html
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

import labkit.checks.lab01  # noqa: F401 -- fills the exercise registry the messages read
from labkit.models import LabModel
from labkit.widgets.display import (
    Cache,
    NotebookWatch,
    current,
    error_html,
    exercise_on_traceback,
    explorer_bundle,
    failure_message,
    format_probability,
    missing_space,
    row_layout,
    unfinished_message,
)

__all__ = [
    "AttributionExplorer",
    "default_prompts",
    "inseq_attribution",
    "inseq_method",
    "quiet_transformers",
]

Method = Callable[[LabModel, torch.Tensor, int], torch.Tensor]


# ----- inseq, on the same inputs as the lab ------------------------------------------------------
@contextmanager
def _inseq_baseline(inseq_model, lm: LabModel, baseline_id: int | None):
    """Make inseq's baseline ``baseline_id`` at every position except the anchor.

    inseq builds its baseline from the tokenizer's unk token, keeping only EOS tokens as they
    are. We point the unk token at ``baseline_id`` and declare the anchor to be the "EOS" for the
    duration of one call, then restore both.
    """
    if baseline_id is None:
        yield
        return
    tokenizer = inseq_model.tokenizer
    old_unk, old_eos = tokenizer.unk_token_id, inseq_model.eos_token_id
    tokenizer.unk_token_id = baseline_id
    inseq_model.eos_token_id = lm.anchor_token_id
    try:
        yield
    finally:
        tokenizer.unk_token_id = old_unk
        inseq_model.eos_token_id = old_eos


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """inseq's calls into transformers 4.x print notices that are not for students ("Asking to
    truncate to max_length ...", "The attention mask is not set ..."): keep transformers' log
    at errors only, and warnings off, for the duration."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(level)


def inseq_attribution(
    lm: LabModel,
    tokens: torch.Tensor,
    target_id: int,
    method: str = "integrated_gradients",
    baseline_id: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """inseq's scores (pos,) for predicting ``target_id`` after ``tokens`` (1, pos).

    The attributed quantity is the target's logit (inseq's default is its probability).
    inseq's occlusion reports absolute effects, ``|score(original) - score(occluded)|``.
    Gradient methods are reduced over d_model the way the lab does it: a sum for integrated
    gradients and input x gradient, the L2 norm for saliency; attention is averaged over layers
    and heads. ``baseline_id`` (integrated gradients, occlusion) replaces inseq's default
    baseline, the unk token everywhere, by that token everywhere except the anchor.
    Extra keyword arguments go to inseq (e.g. ``n_steps=64``).
    """
    import inseq

    text = lm.tokenizer.decode(tokens[0])
    target = lm.tokenizer.decode([target_id])
    if method != "attention":  # attention does not depend on the target; inseq says so loudly
        kwargs.setdefault("attributed_fn", "logit")
    unk = lm.tokenizer.unk_token_id  # inseq.load_model sets an unset unk to the pad token
    try:
        inseq_model = inseq.load_model(lm.model, method, tokenizer=lm.tokenizer)
        with _inseq_baseline(inseq_model, lm, baseline_id), quiet_transformers():
            out = inseq_model.attribute(
                text, text + target, show_progress=False, skip_special_tokens=False, **kwargs
            )
    finally:
        lm.tokenizer.unk_token_id = unk  # the lab's tokenizer comes back as it was
    scores = out.sequence_attributions[0].target_attributions  # (pos + 1, 1, ...)
    n_pos = tokens.shape[1]
    if scores.shape[0] != n_pos + 1:
        raise ValueError(
            f"inseq tokenised the prompt into {scores.shape[0] - 1} tokens, the lab into {n_pos}: "
            "the prompt does not survive a decode/encode round trip."
        )
    scores = scores[:n_pos, 0].float()  # drop the target's own position
    if method == "saliency":
        return scores.norm(dim=-1)
    if method == "attention":
        return scores.flatten(1).mean(dim=-1)
    return scores.sum(dim=-1) if scores.dim() == 2 else scores.reshape(n_pos)


def inseq_method(method: str, **kwargs) -> Method:
    """:func:`inseq_attribution` as a method for the explorer: ``(lm, tokens, target_id)``."""

    def run(lm: LabModel, tokens: torch.Tensor, target_id: int) -> torch.Tensor:
        return inseq_attribution(lm, tokens, target_id, method, **kwargs)

    run.__name__ = f"inseq_{method}"
    return run


# ----- the explorer ------------------------------------------------------------------------------
def default_prompts() -> dict[str, tuple[str, list[str]]]:
    """The lab's running data: {label: (prompt, candidate targets)} for puns, literals, facts."""
    from labkit.data import facts, puns

    prompts: dict[str, tuple[str, list[str]]] = {}
    for item in puns():
        prompts[f"pun: {item['id']}"] = (item["pun"], [item["target"], item["foil"]])
        prompts[f"literal: {item['id']}"] = (item["literal"], [item["target"]])
    for item in facts():
        prompts[f"fact: {item['id']}"] = (item["prompt"], [item["target"]])
    return prompts


class AttributionExplorer:
    """Controls (prompt, target, method) above a coloured-token heatmap that follows them.

    ``methods`` maps a name to ``method(lm, tokens, target_id) -> scores (pos,)``; ``prompts``
    maps a label to ``(prompt, candidate targets)`` (default: :func:`default_prompts`). The
    target box also offers the model's top predictions and accepts any single-token text,
    read when you press Enter or leave the box; a word typed without its leading space
    ("London" after "... is") is refused with the model's word (" London") on a button.

    Methods written in the notebook are looked up again at every update, so an exercise
    finished after the explorer was built is used at once (see :mod:`labkit.widgets.display`);
    scores are kept until the next notebook cell runs.

    In a saved notebook the explorer shows the heatmap it drew first (as HTML), so a notebook
    viewer without a running kernel still shows a picture.
    """

    def __init__(
        self,
        lm: LabModel,
        methods: Mapping[str, Method],
        prompts: Mapping[str, tuple[str, Sequence[str]]] | None = None,
        show_anchor: bool = False,
    ) -> None:
        import ipywidgets as widgets

        if not methods:
            raise ValueError("Give at least one method, e.g. {'saliency': my_saliency_method}.")
        self.lm = lm
        self.methods = dict(methods)
        self.prompts = dict(prompts or default_prompts())
        self.show_anchor = show_anchor
        self._quiet = False  # True while the explorer sets its own controls
        self._scores = Cache(32)  # (method, prompt, target id) -> (scores, seconds)
        self._probs = Cache(8)  # prompt -> next-token probabilities
        first = next(iter(self.prompts))
        wide = {"description_width": "initial"}
        self.prompt = widgets.Dropdown(
            options=list(self.prompts), value=first, description="prompt", style=wide
        )
        # continuous_update=False: the value arrives on Enter or when the box loses focus, not
        # at every keystroke (half-typed words are often several tokens).
        self.target = widgets.Combobox(
            description="target",
            ensure_option=False,
            continuous_update=False,
            placeholder="a token, then Enter",
            style=wide,
        )
        self.method = widgets.Dropdown(options=list(self.methods), description="method", style=wide)
        self.suggestion = widgets.Button(layout=widgets.Layout(display="none", width="auto"))
        self._suggested = ""  # the target the suggestion button puts in the box
        self.suggestion.on_click(lambda button: self._use_suggestion())
        self.status = widgets.HTML()
        self.html = widgets.HTML()
        self._set_targets()
        self.prompt.observe(self._on_prompt, names="value")
        self.target.observe(self._on_control, names="value")
        self.method.observe(self._on_control, names="value")
        controls = widgets.HBox([self.prompt, self.target, self.method], layout=row_layout())
        self.widget = widgets.VBox(
            [controls, self.status, self.suggestion, self.html],
            layout=widgets.Layout(width="100%"),
        )
        self.widget.add_class("labkit-explorer")
        self.widget.add_class("labkit-attribution-explorer")
        self.status.add_class("labkit-status")
        self.suggestion.add_class("labkit-suggestion")
        self.html.add_class("labkit-picture")
        self._watch = NotebookWatch(self)
        self.update()
        # What a saved notebook shows: no timings, so re-running the notebook changes nothing.
        self._first_view = (
            f"<div><b>{html.escape(self.method.value)}</b>: {html.escape(self.prompt.value)} "
            f"&rarr; {html.escape(repr(self.target.value))}</div>{self.html.value}"
            if self.html.value
            else ""
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The live widget, plus its first view as HTML and a line of text for static viewers."""
        return explorer_bundle(
            self.widget,
            {"text/html": self._first_view},
            "AttributionExplorer (run the notebook to use its controls)",
        )

    def clear_caches(self) -> None:
        """Forget computed scores (a notebook cell ran: any method may have changed)."""
        self._scores.clear()

    def _tokens(self) -> torch.Tensor:
        return self.lm.to_tokens(self.prompts[self.prompt.value][0], prepend_anchor=True)

    def _next_token_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        key = self.prompt.value
        probs = self._probs.get(key)
        if probs is None:
            with torch.no_grad():
                probs = self.lm.next_token_probs(tokens).detach()
            self._probs.put(key, probs)
        return probs

    def _set_targets(self) -> None:
        prompt, candidates = self.prompts[self.prompt.value]
        probs = self._next_token_probs(self._tokens())
        top = [self.lm.tokenizer.decode([i]) for i in probs.topk(5).indices.tolist()]
        options = list(dict.fromkeys([*candidates, *top]))
        self._quiet = True
        try:
            self.target.options = options
            self.target.value = options[0]
        finally:
            self._quiet = False

    def _on_prompt(self, change) -> None:
        # A pun and its literal sentence share their target: setting the same target fires no
        # event, so redraw here, once, whatever the target did.
        self._set_targets()
        self.update()

    def _on_control(self, change) -> None:
        if not self._quiet:
            self.update()

    def _use_suggestion(self) -> None:
        suggested = self._suggested
        if suggested and suggested != self.target.value:
            self.target.value = suggested  # redraws through the observer
        else:
            self.update()

    def update(self) -> None:
        """Recompute the selected method's scores (with the method as defined now) and redraw."""
        from labkit.plot.tokens import token_heatmap

        tokens, target, name = self._tokens(), self.target.value, self.method.value
        prompt = self.prompts[self.prompt.value][0]
        self._watch.wait_for(None)
        spacing = missing_space(self.lm, prompt, target, self._next_token_probs(tokens))
        if spacing is not None:
            self._message(spacing.message, suggestion=spacing.suggestion)
            return
        try:
            target_id = self.lm.token_id(target)
        except ValueError as err:
            self._message(str(err))
            return
        prob = float(self._next_token_probs(tokens)[target_id])
        method = current(self.methods[name])
        key = (name, method, prompt, target_id)
        cached = self._scores.get(key)
        if cached is None:
            self.status.value = (
                f"<i>computing {html.escape(name)} for {html.escape(repr(target))}…</i>"
            )
            start = time.perf_counter()
            try:
                scores = torch.as_tensor(method(self.lm, tokens, target_id)).detach().cpu()
            except NotImplementedError as err:
                function = exercise_on_traceback(err)
                self._message(unfinished_message(function, needed_by=repr(name)))
                self._watch.wait_for(function)
                return
            except Exception as err:  # the student's method failed: say so, keep the widget alive
                function = exercise_on_traceback(err)
                self._message(f"'{name}': " + failure_message(function, err))
                self._watch.wait_for(function)
                return
            cached = (scores.reshape(-1), time.perf_counter() - start)
            self._scores.put(key, cached)
            took = f"took {cached[1]:.2f} s"
        else:
            took = f"took {cached[1]:.2f} s (kept from before)"
        scores = cached[0]
        labels = self.lm.str_tokens(tokens)
        if scores.shape[0] != len(labels):
            self._message(f"'{name}' returned {scores.shape[0]} scores for {len(labels)} tokens.")
            return
        if not self.show_anchor:
            labels, scores = labels[1:], scores[1:]
        top = labels[int(scores.abs().argmax())]
        self.status.value = (
            f"p({html.escape(repr(target))}) = {format_probability(prob)} &middot; "
            f"{html.escape(name)} {took} &middot; largest |score|: {html.escape(repr(top))}"
        )
        self.suggestion.layout.display = "none"
        self.html.value = token_heatmap(labels, scores).data

    def _message(self, text: str, suggestion: str | None = None) -> None:
        """Show a problem instead of the picture, with a button for the fix if there is one."""
        self.status.value = error_html(text)
        self.html.value = ""
        if suggestion:
            self.suggestion.description = f"use {suggestion!r}"
            self._suggested = suggestion
            self.suggestion.layout.display = None
        else:
            self.suggestion.layout.display = "none"
