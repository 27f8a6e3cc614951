"""Hugging Face tokenizers: a conversation tokenizes as the model's chat template does, placeholders
become the family's media tokens, and what cannot be used is a one-line error."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from megaomni.config import DataConfig, OmniConfig
from megaomni.data.hf_tokenizer import HFTokenizer
from megaomni.data.sample import build_sample
from megaomni.data.tokenizer import OmniTokenizer, load_tokenizer
from megaomni.errors import BadSample
from megaomni.media.audio import audio_tokens
from megaomni.media.vision import vision_tokens
from tests.data.helpers import conversation, load, members, png, raw, write_shard
from tests.data.hf_tokenizers import (
    CHATML_TEMPLATE,
    QWEN2_VL_TOKENS,
    hf_folder,
    llava,
    qwen2_audio,
    qwen2_vl,
)
from tests.media_views import raw_members

IMAGE_PX, FRAME_PX = (56, 28), (28, 28)  # 2x4 patches: 2 LLM tokens at merge 2; 2x2: 1 token
TURNS = [("user", "<image>\nWhat is shown?"), ("assistant", "a red circle"),
         ("user", "And in the video <video>?"), ("assistant", "A square moves.")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf")
    return {name: make(str(root / name)) for name, make in
            (("qwen2_vl", qwen2_vl), ("qwen2_audio", qwen2_audio), ("llava", llava))}


@pytest.fixture(scope="module")
def qwen(folders) -> HFTokenizer:
    return load_tokenizer(folders["qwen2_vl"])


def template_ids(folder: str, messages: list[dict]) -> list[int]:
    """The chat template's ids of ``messages``, from transformers itself."""
    return AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, tokenize=True)["input_ids"]


def parts(content: str) -> list[dict]:
    """Content with placeholders as Hugging Face content parts."""
    return [{"type": p[1:-1]} if p in ("<image>", "<video>") else {"type": "text", "text": p}
            for p in re.split("(<image>|<video>)", content) if p]


def expanded(ids: list[int], pads: dict[int, list[int]]) -> list[int]:
    """``ids`` with the i-th occurrence of pad p repeated ``pads[p][i]`` times (as the processor does)."""
    counts = {pad: iter(n) for pad, n in pads.items()}
    return [t for token in ids for t in ([token] * next(counts[token]) if token in counts else [token])]


def video_sample(turns, frames: int = 3):
    sample = raw(conversation(*turns), images=[png(*IMAGE_PX)])
    sample.members.update(raw_members(video=[png(*FRAME_PX, (10 * i, 0, 0)) for i in range(frames)]))
    return sample


def test_conversation_is_the_chat_template_with_pads(qwen):
    sample = build_sample(video_sample(TURNS), qwen, OmniConfig())
    template = template_ids(qwen.path, [{"role": role, "content": parts(content)} for role, content in TURNS])
    image_pad, video_pad = qwen.token_id("<|image_pad|>"), qwen.token_id("<|video_pad|>")
    expected = expanded(template, {image_pad: [vision_tokens(2, 4, 2)], video_pad: [3 * vision_tokens(2, 2, 2)]})
    assert sample.tokens.tolist() == expected
    assert expected.count(image_pad) == 2 and expected.count(video_pad) == 3
    # Trained: each answer and its <|im_end|>, not the "\n" after it, nothing else.
    head, end = qwen.encode("<|im_start|>assistant\n"), qwen.token_id("<|im_end|>")
    trained = [False] * len(expected)
    for start in (i + len(head) for i in range(len(expected)) if expected[i:i + len(head)] == head):
        stop = expected.index(end, start)
        trained[start:stop + 1] = [True] * (stop + 1 - start)
    assert sample.loss_mask.bool().tolist() == trained[1:] + [False]
    assert qwen.decode(sample.labels[sample.loss_mask.bool()]) == "a red circle<|im_end|>A square moves.<|im_end|>"
    # The media features replace exactly the pads: the wrapper tokens are text.
    assert qwen.media_pad_ids("vision") == (image_pad, video_pad) and qwen.media_pad_id("vision") == image_pad
    assert [item.tokens for item in sample.media["vision"]] == [2, 1, 1, 1]


@pytest.mark.parametrize("turns", [
    [("assistant", "a red circle rising")],  # a plain text sample: the system prompt still comes first
    [("user", "What is heard?"), ("user", "blue square"), ("assistant", "low")],
    [("user", "What is shown?"), ("assistant", "blue square"), ("user", "And in the video?")],
])
def test_text_conversations_are_the_chat_template(qwen, turns):
    messages = [{"role": role, "content": content} for role, content in turns]
    sample = build_sample(raw(conversation(*turns)), qwen, OmniConfig())
    assert sample.tokens.tolist() == template_ids(qwen.path, messages)
    answers = [content for role, content in turns if role == "assistant"]
    assert qwen.decode(sample.labels[sample.loss_mask.bool()]) == "".join(a + "<|im_end|>" for a in answers)


def test_truncation_never_cuts_the_wrapper(qwen):
    turns = [("user", "What is shown?"), ("assistant", "a red circle"), ("user", "<image>"), ("assistant", "red")]
    sample = raw(conversation(*turns), images=[png(*IMAGE_PX)])
    tokens = build_sample(sample, qwen, OmniConfig()).tokens.tolist()
    first = tokens.index(qwen.token_id("<|image_pad|>"))
    cfg = OmniConfig()
    cfg.data.truncate = True
    for limit in (first, first + 2):  # after <|vision_start|>; after the pads, before <|vision_end|>
        cfg.data.seq_length = limit
        with pytest.raises(BadSample, match="would cut a media placeholder run"):
            build_sample(sample, qwen, cfg)
    cfg.data.seq_length = first - 1  # before <|vision_start|>: the first answer is kept
    cut = build_sample(sample, qwen, cfg)
    assert cut.truncated_from == len(tokens) and "vision" not in cut.media


def test_qwen2_audio_tokens(folders, clip):
    tokenizer = load_tokenizer(folders["qwen2_audio"])
    sample = build_sample(raw(conversation(("user", "<audio>\nWhat is heard?"), ("assistant", "low")), audios=[clip]),
                          tokenizer, OmniConfig())
    bos, pad, eos = (tokenizer.token_id(t) for t in ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"))
    n = audio_tokens(101, OmniConfig().model.audio.downsample)
    ids = sample.tokens.tolist()
    start = ids.index(bos)
    assert ids[start:start + n + 2] == [bos, *[pad] * n, eos] and ids.count(pad) == n
    assert tokenizer.media_pad_id("audio") == pad and tokenizer.media_pad_ids("vision") == ()
    with pytest.raises(ValueError, match="has no tokens for vision media"):
        tokenizer.media_pad_id("vision")


def test_llava_repeats_its_image_token(folders):
    tokenizer = load_tokenizer(folders["llava"])  # its template in chat_template.json, content as parts
    sample = build_sample(raw(conversation(("user", "<image>\nWhat is shown?"), ("assistant", "a red circle")),
                              images=[png(*IMAGE_PX)]), tokenizer, OmniConfig())
    image, enc = tokenizer.token_id("<image>"), tokenizer.encode
    assert sample.tokens.tolist() == [*enc("USER: "), image, image, *enc("\nWhat is shown?"), *enc(" "),
                                      *enc("ASSISTANT: "), *enc("a red circle"), *enc(" ")]
    assert tokenizer.decode(sample.labels[sample.loss_mask.bool()]) == "a red circle "  # no end token in its template
    assert "<image>" not in tokenizer.reserved_tokens and "</s>" in tokenizer.reserved_tokens


def test_vocabulary_and_pad(qwen):
    assert qwen.vocab_size == len(AutoTokenizer.from_pretrained(qwen.path)) > max(map(qwen.token_id, QWEN2_VL_TOKENS))
    assert qwen.pad_id == qwen.token_id("<|endoftext|>") and qwen.eos_id == qwen.token_id("<|im_end|>")
    assert qwen.decode(qwen.encode("a red circle rising")) == "a red circle rising"


def test_bad_samples(qwen, clip):
    cfg = OmniConfig()
    with pytest.raises(BadSample, match=re.escape("user content contains <|im_start|>")) as e:
        build_sample(raw(conversation(("user", "hi<|im_start|>system"), ("assistant", "red"))), qwen, cfg)
    assert e.value.reason == "reserved_token"
    with pytest.raises(BadSample, match=r"has no tokens for <audio> \(knows: Qwen2-Audio") as e:
        build_sample(raw(conversation(("user", "<audio>"), ("assistant", "low")), audios=[clip]), qwen, cfg)
    assert e.value.reason == "unsupported_media"
    # megaomni's own chat tokens are plain text to a Hugging Face tokenizer.
    build_sample(raw(conversation(("user", "<|user|> hi"), ("assistant", "red"))), qwen, cfg)


def test_load_tokenizer_picks_by_path(folders, tokenizer, tmp_path):
    assert type(load_tokenizer(tokenizer.path)) is OmniTokenizer
    assert type(load_tokenizer(folders["qwen2_vl"])) is HFTokenizer
    with pytest.raises(ValueError, match=f"tokenizer {tmp_path}: no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="tokenizer /nope/tok: no such file or folder"):
        load_tokenizer("/nope/tok")
    # A data directory holding a Hugging Face tokenizer (tools/prepare_data.py --tokenizer) is its own default.
    shutil.copytree(folders["qwen2_vl"], tmp_path / "data")
    assert DataConfig(path=str(tmp_path / "data")).tokenizer_path() == str(tmp_path / "data")
    (tmp_path / "data" / "tokenizer.model").write_bytes(b"")
    assert DataConfig(path=str(tmp_path / "data")).tokenizer_path() == str(tmp_path / "data" / "tokenizer.model")


@pytest.mark.parametrize("template,error", [
    (None, "no chat template"),
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_end|>{% endfor %}",
     "cannot be split into turns (it renders the content of turn 0 (user) 0 times"),
    ("{{ raise_exception('no') }}",
     "cannot be split into turns (rendering ['user', 'assistant', 'user', 'assistant'] fails: no)"),
])
def test_unusable_templates(tmp_path, template, error):
    folder = hf_folder(str(tmp_path / "t"), QWEN2_VL_TOKENS, template, eos="<|im_end|>", pad="<|endoftext|>")
    with pytest.raises(ValueError, match=f"^tokenizer {re.escape(folder)}: .*{re.escape(error)}"):
        load_tokenizer(folder)


def test_frames_follow_the_template_per_conversation(tmp_path):
    """A template that frames the last answer apart (Qwen3's empty <think> block) is followed."""
    last = CHATML_TEMPLATE.replace("<|im_start|>{{ message['role'] }}\n{{ message['content'] }}",
                                   "<|im_start|>{{ message['role'] }}\n{% if loop.last and message['role'] == "
                                   "'assistant' %}<think>\n\n</think>\n\n{% endif %}{{ message['content'] }}")
    tokenizer = HFTokenizer(hf_folder(str(tmp_path / "t"), QWEN2_VL_TOKENS, last, eos="<|im_end|>",
                                      pad="<|endoftext|>"))
    turns = [("user", "What is shown?"), ("assistant", "blue square"), ("user", "And?"), ("assistant", "red")]
    sample = build_sample(raw(conversation(*turns)), tokenizer, OmniConfig())
    messages = [{"role": role, "content": content} for role, content in turns]
    assert sample.tokens.tolist() == template_ids(tokenizer.path, messages)
    assert torch.equal(sample.labels[sample.loss_mask.bool()],
                       torch.tensor(tokenizer.encode("blue square<|im_end|>red<|im_end|>")))


def test_loader_workers_share_the_tokenizer(folders, tmp_path, caplog):
    write_shard(str(tmp_path / "a.tar"), members({f"s{i}": {"json": conversation(*TURNS[:2]), "png": png(*IMAGE_PX)}
                                                  for i in range(4)}))
    cfg = OmniConfig()
    cfg.data.workers = 1
    tokenizer = load_tokenizer(folders["qwen2_vl"])
    loader, _ = load(cfg, tokenizer, tmp_path, caplog)
    direct = build_sample(raw(conversation(*TURNS[:2]), images=[png(*IMAGE_PX)]), tokenizer, OmniConfig())
    assert len(loader.samples) == 4 and all(torch.equal(s.tokens, direct.tokens) for s in loader.samples)
