"""`bertclf explain`: why the model said what it said, as per-word Integrated Gradients attributions.

Captum's LayerIntegratedGradients integrates the gradient of a label's logit along a straight path from a
baseline (the same text with every word piece replaced by [PAD], special tokens kept) to the input, in the
space of the embedding layer's output. Completeness: the attributions sum to logit(input) - logit(baseline);
the gap (`delta`) is reported with each explanation, so a too-coarse integration shows.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from bertclf.errors import InputError
from bertclf.model.inference import Predictor

DEFAULT_STEPS = 50


@dataclass
class WordAttribution:
    word: str
    score: float  # signed: > 0 pushed the label's logit up


@dataclass
class Explanation:
    """One text's attributions for one label, word pieces merged back into words."""

    text: str
    label: str
    probability: float
    logit: float
    baseline_logit: float
    delta: float  # sum(attributions) - (logit - baseline_logit): the integration's error
    words: list[WordAttribution] = field(default_factory=list)
    # the checkpoint blends its TF-IDF baseline (bertclf.blend): the words explain the transformer's part only
    blend_weight: float = 1.0
    blended_probability: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def top(self, k: int = 5) -> list[WordAttribution]:
        return sorted(self.words, key=lambda w: -abs(w.score))[:k]


class Explainer:
    """A checkpoint loaded once for explanations (fp32, on CPU unless told otherwise)."""

    def __init__(self, predictor: Predictor, steps: int = DEFAULT_STEPS):
        from captum.attr import LayerIntegratedGradients

        from bertclf.model.adapters import hf_model

        self.predictor = predictor
        self.steps = steps
        model = predictor.model

        def label_logit(input_ids, attention_mask, target):
            return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, target]

        self._lig = LayerIntegratedGradients(label_logit, hf_model(model).base_model.embeddings)

    @classmethod
    def load(cls, checkpoint_uri: str, steps: int = DEFAULT_STEPS) -> Explainer:
        return cls(Predictor.load(checkpoint_uri, device="cpu", precision="fp32"), steps)

    def labels_to_explain(self, probs: np.ndarray, label: str | None) -> list[str]:
        space = self.predictor.space
        if label is not None:
            if label not in space.names:
                raise InputError(f"label {label!r} is not in the checkpoint's labels {space.names}")
            return [label]
        predicted = space.predict(probs[None, :])[0]
        return predicted or [space.names[int(probs.argmax())]]  # nothing over its threshold: the likeliest

    def explain(self, text: str, label: str | None = None) -> list[Explanation]:
        """Attributions for `label`, or for each predicted label of the text."""
        tok = self.predictor.tokenizer
        enc = tok(text, truncation=True, max_length=self.predictor.max_length, return_tensors="pt",
                  return_offsets_mapping=True, return_special_tokens_mask=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        special = enc["special_tokens_mask"].bool()
        baseline = torch.where(special, ids, torch.full_like(ids, tok.pad_token_id))
        with torch.inference_mode():
            logits = self.predictor.model(input_ids=ids, attention_mask=mask).logits[0].float()
            base_logits = self.predictor.model(input_ids=baseline, attention_mask=mask).logits[0].float()
        probs = self.predictor.space.probabilities(logits[None, :].numpy())[0]
        blended = self.predictor.probabilities([text])[0] if self.predictor.blends else None
        out = []
        for name in self.labels_to_explain(probs if blended is None else blended, label):
            j = self.predictor.space.names.index(name)
            attributions, delta = self._lig.attribute(inputs=ids, baselines=baseline, additional_forward_args=(mask, j),
                                                      n_steps=self.steps, return_convergence_delta=True)
            per_token = attributions.sum(dim=-1)[0].detach().numpy()
            out.append(Explanation(text=text, label=name, probability=float(probs[j]), logit=float(logits[j]),
                                   baseline_logit=float(base_logits[j]), delta=float(delta[0]),
                                   words=_merge_word_pieces(text, enc, per_token),
                                   blend_weight=self.predictor.blend_weight if blended is not None else 1.0,
                                   blended_probability=None if blended is None else float(blended[j])))
        return out


def _merge_word_pieces(text: str, enc, per_token: np.ndarray) -> list[WordAttribution]:
    """Sum the attributions of a word's pieces, the word spelled as in the text; [CLS]/[SEP] are dropped.
    SentencePiece tokenizers (DeBERTa-v2/v3) start a word's span at the space before it: the space is not shown."""
    spans: list[list] = []  # [start, end, score] per word
    last_word: int | None = None
    for i, (word_id, (start, end)) in enumerate(zip(enc.word_ids(0), enc["offset_mapping"][0].tolist(),
                                                    strict=True)):
        if word_id is None:
            continue
        if word_id == last_word:
            spans[-1][1] = end
            spans[-1][2] += float(per_token[i])
        else:
            spans.append([start, end, float(per_token[i])])
        last_word = word_id
    return [WordAttribution(word=text[start:end].strip(), score=score) for start, end, score in spans]


def render_terminal(explanations: list[Explanation]) -> str:
    lines = []
    for e in explanations:
        lines.append(f"{e.text!r}\n  {e.label}: p={e.probability:.3f}, logit {e.logit:+.3f} "
                     f"(baseline {e.baseline_logit:+.3f}; attributions sum within {abs(e.delta):.3g})")
        if e.blended_probability is not None:
            lines.append(f"  blended with the checkpoint's TF-IDF baseline (transformer weight {e.blend_weight}): "
                         f"p={e.blended_probability:.3f}; the words explain the transformer's part")
        lines.append("  " + " ".join(f"{w.word}({w.score:+.2f})" for w in e.words))
    return "\n".join(lines)


def render_json(explanations: list[Explanation]) -> str:
    return "\n".join(json.dumps(e.to_dict()) for e in explanations)


def render_html(e: Explanation) -> str:
    """The text with each word shaded by its attribution: green pushed the label up, red pushed it down."""
    peak = max((abs(w.score) for w in e.words), default=0.0) or 1.0
    spans = []
    for w in e.words:
        alpha = min(1.0, abs(w.score) / peak)
        color = f"rgba(0,160,0,{alpha:.2f})" if w.score >= 0 else f"rgba(220,0,0,{alpha:.2f})"
        spans.append(f'<span title="{w.score:+.3f}" style="background:{color};padding:0 2px;border-radius:3px">'
                     f"{html.escape(w.word)}</span>")
    return (f'<div class="explanation"><b>{html.escape(e.label)}</b> p={e.probability:.3f}: ' + " ".join(spans)
            + "</div>")


def render_html_page(explanations: list[Explanation]) -> str:
    body = "".join(render_html(e) for e in explanations)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>bertclf explain</title></head>'
            f'<body style="font-family:system-ui,sans-serif;line-height:2">{body}</body></html>\n')
