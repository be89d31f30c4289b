"""Tiny random encoders of the seven architectures users bring (BERT, RoBERTa, XLM-R, DistilBERT, DeBERTa-v2,
MPNet, ELECTRA), each with a tokenizer of its own class (WordPiece, byte-level BPE, Unigram) that knows the
synthetic words: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from bertclf.dev.synthetic import WORDS
from bertclf.dev.tiny_model import save_tiny_checkpoint

LETTERS = list("abcdefghijklmnopqrstuvwxyz")
SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
ARCHITECTURES = ["bert", "roberta", "xlm-roberta", "distilbert", "deberta-v2", "mpnet", "electra"]
TAKES_PREFIX = {"bert", "roberta", "xlm-roberta", "electra"}  # their encoders' forward takes `cache`


def _wordpiece(specials: list[str]) -> dict[str, int]:
    return {tok: i for i, tok in enumerate(specials + WORDS + LETTERS)}


def _byte_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocab whose merges build each synthetic word, with and without the leading space (Ġ)."""
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "Ġ"] + LETTERS
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        for start in ("Ġ" + word[0], word[0]):
            piece = start
            if start != word[0] and ("Ġ", word[0]) not in merges:
                merges.append(("Ġ", word[0]))
            for char in word[1:]:
                if (piece, char) not in merges:
                    merges.append((piece, char))
                piece += char
                vocab.append(piece)
            vocab.append(start)
    return {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}, merges


def _unigram(specials: list[str]) -> list[tuple[str, float]]:
    return ([(s, 0.0) for s in specials] + [("▁" + w, -1.0) for w in WORDS] + [("▁", -3.0)]
            + [(c, -5.0) for c in LETTERS])


def build_tiny(directory: Path, arch: str, positions: int = 64):
    """A random 2-layer model of `arch` (hidden 32, 4 heads, intermediate 37) and a tokenizer of its own class,
    saved as a model directory. `positions` usable tokens (RoBERTa-style models get 2 more embeddings)."""
    import transformers as t

    if arch in ("bert", "electra"):
        tokenizer = t.BertTokenizer(vocab=_wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
        cls = t.BertConfig if arch == "bert" else t.ElectraConfig
        extra = {} if arch == "bert" else {"embedding_size": 32}
        config = cls(vocab_size=len(tokenizer), max_position_embeddings=positions, **SIZE, **extra)
    elif arch == "distilbert":
        tokenizer = t.DistilBertTokenizer(vocab=_wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
        config = t.DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                    max_position_embeddings=positions)
    elif arch == "mpnet":
        tokenizer = t.MPNetTokenizer(vocab=_wordpiece(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))
        config = t.MPNetConfig(vocab_size=len(tokenizer), max_position_embeddings=positions + 2, **SIZE)
    elif arch == "roberta":
        vocab, merges = _byte_bpe()
        tokenizer = t.RobertaTokenizer(vocab=vocab, merges=merges)
        config = t.RobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=positions + 2, **SIZE)
    elif arch == "xlm-roberta":
        tokenizer = t.XLMRobertaTokenizer(vocab=_unigram(["<s>", "<pad>", "</s>", "<unk>"]) + [("<mask>", 0.0)])
        config = t.XLMRobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=positions + 2, **SIZE)
    elif arch == "deberta-v2":  # DeBERTa-v3's shape: relative attention only, no absolute position embeddings
        tokenizer = t.DebertaV2Tokenizer(vocab=_unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]"]) + [("[MASK]", 0.0)])
        config = t.DebertaV2Config(vocab_size=len(tokenizer), max_position_embeddings=positions,
                                   relative_attention=True, position_biased_input=False,
                                   pos_att_type=["p2c", "c2p"], position_buckets=16, **SIZE)
    else:
        raise ValueError(arch)
    config.pad_token_id = tokenizer.pad_token_id
    model = t.AutoModelForSequenceClassification.from_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def arch_checkpoint(directory: Path, arch: str) -> Path:
    """A bertclf checkpoint (directory/ckpt) of a tiny `arch` model (built in directory/base) with a fresh head
    over the three synthetic labels, multi-label."""
    return save_tiny_checkpoint(directory / "ckpt", build_tiny(directory / "base", arch), "multi_label",
                                [0.45, 0.5, 0.55])


__all__ = ["ARCHITECTURES", "TAKES_PREFIX", "arch_checkpoint", "build_tiny"]
