"""Write a synthetic omni data set for throughput work: a dynamic mix of image, audio, video and text samples.

The content is noise (smooth gradients with shapes and grain, tone sweeps, passages of made-up
words); only the sizes matter, and they vary per sample as in real omni data:

- ``image``: 1-2 images, each side 224-672 px (256-2304 patches of 14 px after rounding to the
  28-px merge cell), "<image>\\n... Describe the picture." -> a short answer;
- ``audio``: one 2-20 s clip (201-2001 log-mel frames at 100 a second);
- ``video``: 4-8 frames of one size, sides 224-336 px (``KEY.video.N.jpg``, a ``<video>`` placeholder);
- ``text``: a passage of 200-2000 LLM tokens of made-up words, then a question and a short answer.

Default mix ``image:0.4,audio:0.2,video:0.1,text:0.3``; every range is an option.

    python tools/make_synthetic_data.py --out DIR [--samples 2000] [--seed 0] [--shards 8] [--mix ...]

writes ``DIR/synth-00000.tar``... in the format of ``tools/make_toy_data.py`` (whose tar writer and
tone generator it reuses), ``DIR/tokenizer.model`` and ``DIR/meta.json`` (the mix, the ranges and
the data set's statistics). Deterministic per seed. The tokenizer is trained on a word list fixed
across seeds, so data sets of different seeds share it and can be blended.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/ is scripts, not a package
from make_toy_data import PATTERNS, SAMPLE_RATE, ShardWriter, tone  # noqa: E402

from megaomni.data.tokenizer import OmniTokenizer, train_tokenizer  # noqa: E402
from megaomni.media.audio import AUDIO  # noqa: E402
from megaomni.media.images import fit_size  # noqa: E402
from megaomni.media.vision import IMAGE, VIDEO  # noqa: E402

KINDS = ("image", "audio", "video", "text")
DEFAULT_MIX = "image:0.4,audio:0.2,video:0.1,text:0.3"
# Inclusive (low, high) ranges, each an option (--image-side 28,84 ...).
DEFAULT_RANGES = {
    "images": (1, 2),  # images per image sample
    "image_side": (224, 672),  # pixels, each side drawn independently
    "audio_seconds": (2.0, 20.0),
    "video_frames": (4, 8),
    "video_side": (224, 336),
    "text_tokens": (200, 2000),  # LLM tokens of a text sample's passage
    "answer_words": (8, 40),
}
# How the statistics count media (the pipeline's own rules at model/data settings of
# examples/configs/omni_2b.yaml): 14-px patches merged 2x2, 100 log-mel frames a second, 4 a token.
PATCH, MERGE, HOP, FRAMES_PER_TOKEN = 14, 2, 160, 4
MAX_PIXELS = 1 << 40  # the statistics count images at their own size (the generator's sizes are the limits)

LEXICON_SEED = 20240901  # the word list (and so the tokenizer) is the same for every --seed
LEXICON_WORDS = 4000
TOKENIZER_VOCAB = 4096
ONSETS = ("", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
          "br", "ch", "dr", "fl", "gr", "kl", "pr", "sh", "st", "th", "tr")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "y")
CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "rk")
PROMPTS = {
    "image": ("Describe the picture.", "What is shown here?", "Which colours and shapes do you see?"),
    "images": ("Compare the two pictures.", "What differs between these images?"),
    "audio": ("What is heard?", "Describe the sound.", "Transcribe the clip."),
    "video": ("What happens in the video?", "Describe the motion.", "Which shape moves, and where?"),
    "text": ("Which word ends the passage above?", "Summarize the passage.", "What is the text about?"),
}


def lexicon() -> tuple[list[str], np.ndarray]:
    """Made-up words and their Zipf frequencies (a few common short words, a long tail)."""
    rng = np.random.default_rng(LEXICON_SEED)
    words: dict[str, None] = {}
    while len(words) < LEXICON_WORDS:
        syllables = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.4, 0.2, 0.1]))
        parts = zip(*(rng.integers(len(part), size=syllables) for part in (ONSETS, VOWELS, CODAS)))
        words["".join(ONSETS[o] + VOWELS[v] + CODAS[c] for o, v, c in parts)] = None
    listed = sorted(words, key=len)  # short words the most frequent, as in real text
    frequency = 1.0 / (np.arange(len(listed)) + 2.7) ** 1.07
    return listed, frequency / frequency.sum()


def train_synthetic_tokenizer(out: str, words: list[str], frequency: np.ndarray) -> OmniTokenizer:
    """A BPE tokenizer over the word list (in-process, via megaomni's train_tokenizer as
    make_toy_data does): ``DIR/tokenizer.model``. Common words become one piece, rare ones 2-4."""
    rng = np.random.default_rng(LEXICON_SEED + 1)
    corpus = [" ".join(words[i] for i in rng.choice(len(words), 24, p=frequency)) for _ in range(3000)]
    corpus += words + [p for prompts in PROMPTS.values() for p in prompts] + ["0123456789 ,.?!:;'-\n"]
    return OmniTokenizer(train_tokenizer(corpus, os.path.join(out, "tokenizer"), TOKENIZER_VOCAB))


class Texts:
    """Random text of the word list, counted in the tokenizer's tokens."""

    def __init__(self, words: list[str], frequency: np.ndarray, tokenizer: OmniTokenizer):
        self.words, self.frequency = words, frequency
        # The tokenizer splits at spaces (each piece is inside one word, its space in front), so a
        # passage's tokens are its words' own: "w1 w2 w3" costs cost(w1) + cost(" w2") + cost(" w3").
        self.first = np.array([len(tokenizer.encode(w)) for w in words])
        self.cost = np.array([len(tokenizer.encode(" " + w)) for w in words])
        self.single = [i for i in np.argsort(-frequency) if self.cost[i] == 1 and self.first[i] == 1]
        self.tokenizer = tokenizer

    def sentence(self, rng: np.random.Generator, count: int) -> str:
        return " ".join(self.words[i] for i in rng.choice(len(self.words), count, p=self.frequency))

    def passage(self, rng: np.random.Generator, tokens: int) -> str:
        """A run of words of exactly ``tokens`` tokens."""
        picked, total = [], 0
        while True:
            draw = rng.choice(len(self.words), 256, p=self.frequency)
            for i in draw:
                cost = self.first[i] if not picked else self.cost[i]
                if total + cost > tokens:
                    break
                picked.append(i)
                total += cost
            else:
                continue
            break
        while total < tokens:  # top up with one-token words (a few of the commonest)
            i = self.single[int(rng.integers(min(20, len(self.single))))]
            picked.append(i)
            total += 1 if len(picked) > 1 else self.first[i]
        return " ".join(self.words[i] for i in picked)


# ----------------------------------------------------------------------------- media


def picture(rng: np.random.Generator, width: int, height: int, offset: tuple[float, float] = (0.0, 0.0),
            scene: np.random.Generator | None = None) -> Image.Image:
    """A smooth colour gradient with a few blurred shapes and fine grain: compresses well as
    JPEG, unlike white noise. ``scene`` draws the gradient and shapes (a video's frames share
    one scene, ``offset`` moving the shapes); ``rng`` the grain."""
    scene = scene or rng
    # Drawn at a quarter of the size and scaled up: soft edges without a costly blur.
    w, h = max(1, width // 4), max(1, height // 4)
    corners = scene.integers(0, 256, size=(2, 2, 3)).astype(np.float32)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    top = corners[0, 0] * (1 - x) + corners[0, 1] * x
    bottom = corners[1, 0] * (1 - x) + corners[1, 1] * x
    image = Image.fromarray((top * (1 - y) + bottom * y).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(scene.integers(2, 6))):
        size = scene.uniform(0.15, 0.45) * min(w, h)
        x0 = (scene.uniform(0, 1) + offset[0]) % 1.0 * (w - size)
        y0 = (scene.uniform(0, 1) + offset[1]) % 1.0 * (h - size)
        fill = tuple(int(c) for c in scene.integers(0, 256, 3))
        box = (x0, y0, x0 + size, y0 + size)
        if scene.integers(2):
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    grain = rng.integers(-6, 7, size=(height, width, 1), dtype=np.int16)  # one grain for all channels
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "jpg":
        image.save(out, format="JPEG", quality=90)
    else:
        image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def patches(width: int, height: int) -> int:
    """Patches the pipeline cuts an image of this size into (megaomni.media.images.fit_size)."""
    h, w = fit_size(height, width, factor=PATCH * MERGE, min_pixels=0, max_pixels=MAX_PIXELS)
    return (h // PATCH) * (w // PATCH)


def side(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


# ----------------------------------------------------------------------------- samples


def make_sample(rng: np.random.Generator, kind: str, texts: Texts, ranges: dict, fmt: str):
    """(conversation, media members by extension, sizes: images, patches, audio_frames, video_frames, passage_tokens)."""
    media: dict[str, bytes] = {}
    sizes = {"images": 0, "patches": 0, "audio_frames": 0, "video_frames": 0, "passage_tokens": 0}
    if kind == "image":
        count = side(rng, ranges["images"])
        for i in range(count):
            width, height = side(rng, ranges["image_side"]), side(rng, ranges["image_side"])
            media[f"{i}.{fmt}" if count > 1 else fmt] = encode(picture(rng, width, height), fmt)
            sizes["patches"] += patches(width, height)
        sizes["images"] = count
        question = "\n".join([IMAGE] * count) + "\n" + str(rng.choice(PROMPTS["images" if count > 1 else "image"]))
    elif kind == "audio":
        low, high = ranges["audio_seconds"]
        seconds = round(float(rng.uniform(low, high)), 3)
        media["wav"] = tone(rng, str(rng.choice(PATTERNS)), seconds)
        sizes["audio_frames"] = 1 + int(seconds * SAMPLE_RATE) // HOP
        question = f"{AUDIO}\n{rng.choice(PROMPTS['audio'])}"
    elif kind == "video":
        count = side(rng, ranges["video_frames"])
        width, height = side(rng, ranges["video_side"]), side(rng, ranges["video_side"])
        scene_seed = int(rng.integers(1 << 62))
        step = rng.uniform(-0.05, 0.05, size=2)
        for t in range(count):  # one scene, its shapes moving a little each frame
            frame = picture(rng, width, height, (t * step[0], t * step[1]), np.random.default_rng(scene_seed))
            media[f"video.{t}.{fmt}"] = encode(frame, fmt)
        sizes["video_frames"], sizes["patches"] = count, count * patches(width, height)
        question = f"{VIDEO}\n{rng.choice(PROMPTS['video'])}"
    else:
        low, high = ranges["text_tokens"]
        tokens = int(rng.integers(low, high + 1))
        question = texts.passage(rng, tokens) + "\n" + str(rng.choice(PROMPTS["text"]))
        sizes["passage_tokens"] = tokens
    answer = texts.sentence(rng, side(rng, ranges["answer_words"])) + "."
    conversation = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return conversation, media, sizes


def llm_tokens(conversation: list[dict], sizes: dict, tokenizer: OmniTokenizer) -> int:
    """The sample's LLM tokens as megaomni.data.sample counts them: a role token, the content
    (each placeholder expanded to its pads) and <|end|> per turn."""
    total = 0
    for turn in conversation:
        ids = tokenizer.encode(turn["content"])
        placeholders = sum(ids.count(i) for i in map(tokenizer.token_id, (IMAGE, AUDIO, VIDEO)))
        total += 2 + len(ids) - placeholders
    return total + sizes["patches"] // (MERGE * MERGE) + -(-sizes["audio_frames"] // FRAMES_PER_TOKEN)


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for entry in text.split(","):
        name, _, weight = entry.strip().partition(":")
        if name not in KINDS:
            raise ValueError(f"--mix {text}: unknown kind {name!r} (valid: {', '.join(KINDS)})")
        try:
            mix[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--mix {text}: weight {weight!r} of {name} is not a number") from None
        if not mix[name] >= 0:
            raise ValueError(f"--mix {text}: weight of {name} must be >= 0")
    if not sum(mix.values()) > 0:
        raise ValueError(f"--mix {text}: no kind has a positive weight")
    return {name: weight / sum(mix.values()) for name, weight in mix.items()}


def parse_range(name: str, text: str) -> tuple:
    kind = type(DEFAULT_RANGES[name][0])
    parts = text.split(",")
    try:
        low, high = (kind(p) for p in parts) if len(parts) == 2 else (kind(parts[0]),) * 2
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')} {text}: expected MIN,MAX") from None
    if not 0 <= low <= high:
        raise ValueError(f"--{name.replace('_', '-')} {text}: need 0 <= MIN <= MAX")
    return low, high


def _check_ranges(ranges: dict) -> None:
    for name in ("image_side", "video_side"):
        if ranges[name][0] < PATCH * MERGE:
            raise ValueError(f"--{name.replace('_', '-')}: sides below {PATCH * MERGE} px hold no merge cell")
    for name in ("images", "video_frames", "answer_words", "text_tokens"):
        if ranges[name][0] < 1:
            raise ValueError(f"--{name.replace('_', '-')}: MIN must be >= 1")
    if ranges["audio_seconds"][0] < 0.05:
        raise ValueError("--audio-seconds: clips of under 0.05 s are too short for a log-mel frame")


def write_synthetic_data(out: str, samples: int = 2000, seed: int = 0, shards: int = 8, mix: str = DEFAULT_MIX,
                         ranges: dict | None = None, fmt: str = "jpg") -> dict:
    """Write shards, tokenizer and meta.json to ``out``; returns the meta dict."""
    if samples < 1 or not 1 <= shards <= samples:
        raise ValueError(f"--samples={samples} --shards={shards}: need 1 <= shards <= samples")
    if fmt not in ("jpg", "png"):
        raise ValueError(f"--format={fmt}: valid: jpg, png")
    weights = parse_mix(mix)
    ranges = {**DEFAULT_RANGES, **(ranges or {})}
    _check_ranges(ranges)
    os.makedirs(out, exist_ok=True)
    words, frequency = lexicon()
    tokenizer = train_synthetic_tokenizer(out, words, frequency)
    texts = Texts(words, frequency, tokenizer)
    rng = np.random.default_rng(seed)
    kinds: collections.Counter = collections.Counter()
    totals: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    longest = 0
    with ShardWriter(out, "synth", shards, samples) as writer:
        for index in range(samples):
            kind = str(rng.choice(list(weights), p=list(weights.values())))
            conversation, media, sizes = make_sample(rng, kind, texts, ranges, fmt)
            tokens = llm_tokens(conversation, sizes, tokenizer)
            longest = max(longest, tokens)
            kinds[kind] += 1
            for total in (totals[kind], totals["all"]):
                total.update({**sizes, "llm_tokens": tokens, "bytes": sum(map(len, media.values()))})
            writer.add(index, conversation, media)

    def means(kind: str) -> dict:
        count = samples if kind == "all" else kinds[kind]
        return {name: round(value / count, 1) for name, value in sorted(totals[kind].items())}

    meta = {"samples": samples, "shards": shards, "seed": seed, "format": fmt,
            "mix": {k: round(w, 4) for k, w in weights.items()}, "kinds": dict(sorted(kinds.items())),
            "ranges": {k: list(v) for k, v in ranges.items()},
            "counted_as": {"patch_size": PATCH, "merge_size": MERGE, "audio_frames_per_second": SAMPLE_RATE // HOP,
                           "audio_frames_per_token": FRAMES_PER_TOKEN},
            "longest_llm_tokens": longest, "tokenizer_vocab": tokenizer.vocab_size,
            "mean_per_sample": means("all"), "mean_per_kind": {k: means(k) for k in sorted(kinds)}}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"KIND:WEIGHT,... of {', '.join(KINDS)} "
                        f"(relative weights; default {DEFAULT_MIX})")
    parser.add_argument("--format", default="jpg", choices=("jpg", "png"), help="image and frame encoding")
    for name, (low, high) in DEFAULT_RANGES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=f"{low},{high}", metavar="MIN,MAX",
                            help=f"default {low},{high}")
    args = parser.parse_args(argv)
    try:
        ranges = {name: parse_range(name, getattr(args, name)) for name in DEFAULT_RANGES}
        started = time.perf_counter()
        meta = write_synthetic_data(args.out, args.samples, args.seed, args.shards, args.mix, ranges, args.format)
    except ValueError as e:
        parser.error(str(e))
    mean = meta["mean_per_sample"]
    kinds = ", ".join(f"{k} {n}" for k, n in meta["kinds"].items())
    size = sum(os.path.getsize(os.path.join(args.out, f"synth-{i:05d}.tar")) for i in range(meta["shards"]))
    print(f"synthetic data: {meta['samples']} samples ({kinds}) in {meta['shards']} shards + tokenizer.model "
          f"-> {args.out} ({size / 2**20:.0f} MiB, {time.perf_counter() - started:.1f} s)")
    print(f"  mean per sample: {mean['llm_tokens']} LLM tokens, {mean['patches']} patches "
          f"({mean['images']} images, {mean['video_frames']} video frames), {mean['audio_frames']} audio frames; "
          f"longest sample {meta['longest_llm_tokens']} LLM tokens")
    for kind, m in meta["mean_per_kind"].items():
        print(f"  {kind:5s} {meta['kinds'][kind]:6d}: {m['llm_tokens']:7.1f} LLM tokens, {m['patches']:7.1f} patches, "
              f"{m['audio_frames']:7.1f} audio frames")


if __name__ == "__main__":
    main()
