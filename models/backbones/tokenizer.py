"""A T5 tokenizer trained here on a caption corpus, for toy backbones: `T5Tokenizer()` built without files (what
tiny models use) maps every word to `<unk>`, so captions would teach a model nothing.

A SentencePiece word model (a synthetic caption's vocabulary is a few dozen words, too few for subword
pieces to pay off), trained deterministically (one thread, fixed settings) with T5's special ids (pad 0, eos 1,
unk 2) and handed to transformers' `T5Tokenizer` as its (piece, score) vocabulary; words never seen map to `<unk>`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import sentencepiece as spm
from transformers import T5Tokenizer


def read_corpus(source: str | Path) -> list[str]:
    """Captions, one per line of a text file, or one per `*.txt` file of a folder (a video folder's captions)."""
    source = Path(source)
    if source.is_dir():
        captions = [path.read_text().strip() for path in sorted(source.glob("*.txt"))]
    elif source.is_file():
        captions = source.read_text().splitlines()
    else:
        raise FileNotFoundError(f"tiny.tokenizer_corpus: {source} is neither a caption file nor a folder of captions")
    captions = [caption for caption in captions if caption.strip()]
    if not captions:
        raise ValueError(f"tiny.tokenizer_corpus: {source} holds no captions")
    return captions


def train_t5_tokenizer(captions: list[str], vocab_size: int = 256) -> T5Tokenizer:
    """A T5 tokenizer whose vocabulary (at most `vocab_size` pieces) is learnt from `captions`."""
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "captions.txt"
        corpus.write_text("\n".join(captions) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=f"{folder}/spm", vocab_size=vocab_size, model_type="word",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
            num_threads=1, minloglevel=2,
        )
        model = spm.SentencePieceProcessor(model_file=f"{folder}/spm.model")
    vocab = [(model.id_to_piece(index), model.get_score(index)) for index in range(model.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_tokenizer(corpus: str | Path | None) -> T5Tokenizer:
    """The tokenizer of a tiny or toy backbone: trained on `corpus` when given, else T5's empty one (all `<unk>`)."""
    return T5Tokenizer() if corpus is None else train_t5_tokenizer(read_corpus(corpus))
