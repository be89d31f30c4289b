"""A tiny random BERT (hidden 32, 2 layers) with a WordPiece vocab of the synthetic words, and bertclf checkpoints
of it: built in seconds, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

from bertclf.dev.synthetic import FILLER, LABEL_WORDS, make_rows


def build_tiny_bert(directory: Path, extra_words: tuple[str, ...] = ()) -> Path:
    """A random 2-layer BERT (hidden 32) and a WordPiece vocab covering the synthetic words, saved in `directory`."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted({w for ws in LABEL_WORDS.values() for w in ws} | set(FILLER) | set(extra_words))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + words + list("abcdefghijklmnopqrstuvwxyz"))}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)  # vocab=, not vocab_file= (transformers 5)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertForSequenceClassification(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_checkpoint(directory: Path, tiny_model: Path, task: str, thresholds: list[float] | None = None,
                         blend_weight: float | None = None) -> Path:
    """A bertclf checkpoint of the tiny model in `tiny_model` with a fresh head over the three synthetic labels;
    with `blend_weight`, also a TF-IDF baseline fitted on synthetic rows and blended in at that transformer weight."""
    import pyarrow as pa

    from bertclf import baseline
    from bertclf.labels import LabelSpace, encode_targets
    from bertclf.model import adapters
    from bertclf.model.modeling import build_classifier, load_tokenizer
    from bertclf.records import BlendChoice, CheckpointMeta

    space = LabelSpace(task, sorted(LABEL_WORDS), thresholds or [])
    fitted, blend = None, None
    if blend_weight is not None:
        multi = task == "multi_label"
        table = pa.Table.from_pylist(make_rows(200, seed=11, multi_label=multi))
        targets = encode_targets(table, space, "list" if multi else "single", "labels" if multi else "label", [])
        texts = table["text"].to_pylist()
        fitted = baseline.fit(space, texts[:150], targets[:150], texts[150:], targets[150:], "f1_macro",
                              c_grid=(4.0,))
        blend = BlendChoice(mode="on", used=True, weight=blend_weight, best_weight=blend_weight, metric="f1_macro",
                            transformer=0.5, baseline=0.9, blended=0.9, margin=0.005, reason="test")
    adapters.save_model_dir(directory, build_classifier(str(tiny_model), space), load_tokenizer(str(tiny_model)),
                            CheckpointMeta(labels=space, max_length=32, epoch=1, blend=blend), fitted)
    return directory


__all__ = ["build_tiny_bert", "save_tiny_checkpoint"]
