from __future__ import annotations

import pytest
import sentencepiece as spm

from megaomni.data.tokenizer import ASSISTANT, END, USER, OmniTokenizer, special_tokens
from megaomni.media.audio import AUDIO
from megaomni.media.vision import IMAGE, VIDEO

SPECIAL_TOKENS = special_tokens()


def test_special_tokens_are_single_distinct_ids(tokenizer):
    assert SPECIAL_TOKENS == (IMAGE, AUDIO, "<|image_pad|>", "<|audio_pad|>", USER, ASSISTANT, END, VIDEO)
    ids = {token: tokenizer.encode(token) for token in SPECIAL_TOKENS}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == len(SPECIAL_TOKENS)
    assert [ids[t][0] for t in SPECIAL_TOKENS] == [
        tokenizer.token_id(IMAGE), tokenizer.token_id(AUDIO), tokenizer.media_pad_id("vision"),
        tokenizer.media_pad_id("audio"), tokenizer.user_id, tokenizer.assistant_id, tokenizer.end_id,
        tokenizer.token_id(VIDEO)]
    assert len({tokenizer.pad_id, tokenizer.eos_id, *(v[0] for v in ids.values())}) == len(SPECIAL_TOKENS) + 2
    assert tokenizer.media_pad_id("vision") == ids["<|image_pad|>"][0]
    assert tokenizer.media_pad_id("audio") == ids["<|audio_pad|>"][0]
    with pytest.raises(ValueError, match="no modality 'video'"):
        tokenizer.media_pad_id("video")
    # Kept whole inside text, too.
    assert tokenizer.token_id(IMAGE) in tokenizer.encode("look<image>here")
    assert tokenizer.vocab_size > max(v[0] for v in ids.values())


@pytest.mark.parametrize("text", ["<image>\nWhat is shown?", "<image><audio>\nWhat is shown and heard?",
                                  "red circle rising", "<|user|>blue  square<|end|><|assistant|>low<|end|>"])
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_missing_model_file(tmp_path):
    path = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match=str(path)):
        OmniTokenizer(str(path))


def test_model_without_special_tokens(tmp_path):
    prefix = str(tmp_path / "plain")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["red circle", "blue square"] * 20), model_prefix=prefix,
                                   vocab_size=30, hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   minloglevel=2)
    with pytest.raises(ValueError, match="lacks the special token <image>"):
        OmniTokenizer(prefix + ".model")
