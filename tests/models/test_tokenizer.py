"""Toy backbones' tokenizer: trained on captions, it tells words apart where T5's empty tokenizer sees `<unk>`."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Tokenizer

from models.backbones import CogVideoXAdapter, build_adapter, load_backbone_config
from models.backbones.tokenizer import read_corpus, train_t5_tokenizer
from pipelines.demo.synth import draw_clip

RED, BLUE = "a person in a red shirt, waving", "a person in a blue shirt, waving"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "captions.txt"
    path.write_text("\n".join(draw_clip(0, "train", index, 9, (32, 48)).caption() for index in range(300)))
    return path


def test_a_trained_tokenizer_knows_the_words_and_is_deterministic(corpus):
    empty = T5Tokenizer()
    assert empty(RED).input_ids == empty(BLUE).input_ids  # every word is <unk>: the colour is lost
    captions = read_corpus(corpus)
    tokenizer = train_t5_tokenizer(captions)
    assert tokenizer(RED).input_ids != tokenizer(BLUE).input_ids
    held_out = draw_clip(0, "test", 0, 9, (32, 48)).caption()
    ids = tokenizer(held_out).input_ids
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids, skip_special_tokens=True) == held_out
    assert len(ids) <= 40
    assert train_t5_tokenizer(captions).get_vocab() == tokenizer.get_vocab()


def test_a_toy_backbone_with_a_trained_tokenizer_saves_and_reloads(corpus, tmp_path):
    config = load_backbone_config("configs/backbones/tiny-cogvideox.yaml").model_copy(deep=True)
    config.tiny.tokenizer_corpus = corpus
    config.tiny.transformer["max_text_seq_length"] = 32
    adapter = build_adapter(config)
    adapter.save_pretrained(tmp_path)
    loaded = CogVideoXAdapter.from_pretrained(tmp_path, "1.0", dtype=torch.float32, resolution=adapter.resolution,
                                              num_frames=adapter.num_frames)
    assert loaded.pipeline.tokenizer(RED).input_ids == adapter.pipeline.tokenizer(RED).input_ids
    red, blue = (loaded.encode_prompt([text])[0] for text in (RED, BLUE))
    assert not torch.equal(red, blue)


def test_a_missing_corpus_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer_corpus"):
        read_corpus(tmp_path / "none")
    with pytest.raises(ValueError, match="no captions"):
        read_corpus(tmp_path)
