"""Tiny Hugging Face tokenizer folders of the families megaomni knows (Qwen2-VL, Qwen2-Audio,
Qwen2.5-Omni, LLaVA), made in-process: a byte-level BPE over a few sentences, Qwen2's pre-tokenizer, the
family's special tokens and its chat template (written here from the models' own)."""

from __future__ import annotations

import json
import os

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast

# Qwen2's split before the byte-level mapping.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN2_VL_TOKENS = (*CHATML, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN2_AUDIO_TOKENS = (*CHATML, "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>")
QWEN2_5_OMNI_TOKENS = (*CHATML, "<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>", "<|audio_bos|>",
                       "<|audio_eos|>", "<|AUDIO|>")
LLAVA_TOKENS = ("<unk>", "<s>", "</s>", "<image>", "<pad>")

# Qwen2-VL-Instruct's template: ChatML, the default system prompt, vision tokens for image and video parts.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Plain ChatML with Qwen2's default system prompt (Qwen2-Audio-Instruct's, string content).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# llava-hf's processor template (chat_template.json): content parts only, images first, no end token.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
TEXTS = ["You are a helpful assistant.", "What is shown in the picture?", "What is heard?", "a red circle rising",
         "blue square low", "And in the video? A square moves."]


def hf_folder(path: str, special: tuple[str, ...], template: str | None, *, eos: str, pad: str,
              processor_template: bool = False) -> str:
    """A tokenizer folder at ``path``; the template in chat_template.jinja, or with
    ``processor_template`` in chat_template.json (the processor's file) only."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=list(special),
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                           show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad,
                                   chat_template=None if processor_template else template)
    fast.save_pretrained(path)
    if processor_template:
        with open(os.path.join(path, "chat_template.json"), "w") as f:
            json.dump({"chat_template": template}, f)
    return path


def qwen2_vl(path: str) -> str:
    return hf_folder(path, QWEN2_VL_TOKENS, QWEN2_VL_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>")


def qwen2_audio(path: str) -> str:
    return hf_folder(path, QWEN2_AUDIO_TOKENS, CHATML_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>")


def qwen2_5_omni(path: str) -> str:
    """Its media tokens; ChatML over string content (its template's content parts are not read)."""
    return hf_folder(path, QWEN2_5_OMNI_TOKENS, CHATML_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>")


def llava(path: str) -> str:
    return hf_folder(path, LLAVA_TOKENS, LLAVA_TEMPLATE, eos="</s>", pad="<pad>", processor_template=True)
