from __future__ import annotations

import pytest
import sentencepiece as spm

from megaomni.data.tokenizer import SPECIAL_TOKENS, OmniTokenizer


def test_special_tokens_are_single_distinct_ids(tokenizer):
    ids = {token: tokenizer.encode(token) for token in SPECIAL_TOKENS}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == len(SPECIAL_TOKENS)
    assert [ids[t][0] for t in SPECIAL_TOKENS] == [
        tokenizer.image_id, tokenizer.audio_id, tokenizer.image_pad_id, tokenizer.audio_pad_id,
        tokenizer.user_id, tokenizer.assistant_id, tokenizer.end_id, tokenizer.video_id]
    assert len({tokenizer.pad_id, tokenizer.eos_id, *(v[0] for v in ids.values())}) == len(SPECIAL_TOKENS) + 2
    assert tokenizer.media_pad_id("image") == tokenizer.image_pad_id
    assert tokenizer.media_pad_id("audio") == tokenizer.audio_pad_id
    with pytest.raises(ValueError, match="<|video_pad|>"):
        tokenizer.media_pad_id("video")
    # Kept whole inside text, too.
    assert tokenizer.image_id in tokenizer.encode("look<image>here")
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
