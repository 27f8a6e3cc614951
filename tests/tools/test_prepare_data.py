"""tools/prepare_data.py: LLaVA JSON / JSONL and plain text in, shards the data layer reads back out."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import wave

import numpy as np
import pytest
from PIL import Image

from megaomni.config import OmniConfig
from megaomni.data.sample import build_sample, parse_conversation
from megaomni.data.shards import index_shards, list_shards
from megaomni.data.tokenizer import OmniTokenizer, load_tokenizer
from tests.data.helpers import png
from tests.data.hf_tokenizers import qwen2_vl
from tests.media_views import image_times, raw_audios, raw_images, raw_videos
from tests.media_views import images as decoded_images
from tests.tools.conftest import ROOT, TOOL

SKIPPED = {"bad_conversation": 1, "bad_json": 2, "missing_media": 1, "no_conversations": 1, "no_text": 1,
           "placeholder_mismatch": 2, "reserved_token": 1, "unsupported_media": 2}
TEXTS = ["The quick brown fox.", "Second document,\nwith two lines."]


def wav(width: int, seconds: float = 0.5, rate: int = 16000) -> bytes:
    """A mono tone as ``width``-byte PCM (8-bit unsigned, wider signed)."""
    signal = 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)
    if width == 1:
        frames = np.round(signal * 127 + 128).astype(np.uint8).tobytes()
    else:
        frames = np.round(signal * 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(frames)
    return out.getvalue()


def image_bytes(fmt: str, size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


def human_gpt(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A media folder, a LLaVA JSON list (all good), a LLaVA JSONL and a text JSONL (good and bad
    records), and what the good ones must turn into, in write order."""
    root = tmp_path_factory.mktemp("inputs")
    media = {"img/red.png": png(28, 28), "img/blue.jpg": image_bytes("JPEG", (56, 28), (30, 30, 200)),
             "img/green.gif": image_bytes("GIF", (28, 28), (0, 255, 0)), "audio/tone.wav": wav(2),
             "audio/tone8.wav": wav(1), "audio/clip.mp3": b"ID3\x03not really an mp3",
             **{f"frames/{i}.png": png(28, 28, (10 * i, 0, 0)) for i in range(3)}}
    for name, data in media.items():
        (root / "media" / os.path.dirname(name)).mkdir(parents=True, exist_ok=True)
        (root / "media" / name).write_bytes(data)
    good = [
        {"id": "img.1/a", "image": "img/red.png", "conversations": human_gpt("<image>\nWhat colour?", "red")},
        {"id": "b", "image": "img/blue.jpg", "conversations": [
            {"from": "system", "value": "Be brief."}, *human_gpt("Describe it.", "a blue box"),
            *human_gpt("Sure?", "yes")]},
        {"id": "c", "image": ["img/red.png", "img/green.gif"], "audio": "audio/tone.wav",
         "conversations": human_gpt("<image> and <image>, then <audio>?", "two")},
        {"id": "v", "image": "img/blue.jpg", "video": [f"frames/{i}.png" for i in range(3)],
         "conversations": human_gpt("<video>\nAfter it, <image>?", "it moves")},
        {"id": "d", "audio": "audio/tone8.wav", "conversations": [
            {"role": "user", "content": "What is heard?"}, {"role": "assistant", "content": "a tone"}]},
        {"id": "cap", "image": "img/red.png", "conversations": [{"from": "gpt", "value": "a red square"}]},
    ]
    (root / "media" / "llava.json").write_text(json.dumps(good))
    records = [
        {"id": "m", "image": "img/nope.png", "conversations": human_gpt("<image>\nAnd?", "x")},
        {"id": "p", "image": "img/red.png", "conversations": human_gpt("<image><image>?", "x")},
        {"id": "q", "conversations": []},
        {"id": "ok", "conversations": human_gpt("Hi", "Hello")},
        {"id": "u", "audio": "audio/clip.mp3", "conversations": human_gpt("<audio>", "x")},
        {"id": "r", "conversations": [{"from": "robot", "value": "beep"}]},
        {"id": "w", "video": "movie.mp4", "conversations": human_gpt("<video>", "x")},
    ]
    lines = [json.dumps(r) for r in records[:3]] + ["{not json", ""] + [json.dumps(r) for r in records[3:]]
    (root / "media" / "more.jsonl").write_text("\n".join(lines) + "\n")
    text = [{"text": TEXTS[0]}, {"content": "wrong key"}, "not json", {"text": "bad <|end|> token"},
            {"text": TEXTS[1], "id": "doc.2"}, {"text": "an <image> in text"}]
    (root / "text.jsonl").write_text("\n".join(t if isinstance(t, str) else json.dumps(t) for t in text) + "\n")

    gif_as_png = io.BytesIO()
    Image.open(io.BytesIO(media["img/green.gif"])).convert("RGB").save(gif_as_png, format="PNG")
    user, assistant = ({"role": r} for r in ("user", "assistant"))
    expected = [  # (key, turns, images, audios)
        ("00000000_img_1_a", [{**user, "content": "<image>\nWhat colour?"}, {**assistant, "content": "red"}],
         [media["img/red.png"]], []),
        ("00000001_b", [{**user, "content": "Be brief."}, {**user, "content": "<image>\nDescribe it."},
                        {**assistant, "content": "a blue box"}, {**user, "content": "Sure?"},
                        {**assistant, "content": "yes"}], [media["img/blue.jpg"]], []),
        ("00000002_c", [{**user, "content": "<image> and <image>, then <audio>?"}, {**assistant, "content": "two"}],
         [media["img/red.png"], gif_as_png.getvalue()], [("wav", media["audio/tone.wav"])]),
        ("00000003_v", [{**user, "content": "<video>\nAfter it, <image>?"}, {**assistant, "content": "it moves"}],
         [media["img/blue.jpg"]], []),  # the frames: KEY.video.0.png, ...
        ("00000004_d", [{**user, "content": "<audio>\nWhat is heard?"}, {**assistant, "content": "a tone"}], [], None),
        ("00000005_cap", [{**user, "content": "<image>"}, {**assistant, "content": "a red square"}],
         [media["img/red.png"]], []),  # no human turn: one is made for the placeholder
        ("00000006_ok", [{**user, "content": "Hi"}, {**assistant, "content": "Hello"}], [], []),
        ("00000007", [{**assistant, "content": TEXTS[0]}], [], []),
        ("00000008_doc_2", [{**assistant, "content": TEXTS[1]}], [], []),
    ]
    return {"llava": [str(root / "media" / "llava.json"), str(root / "media" / "more.jsonl")],
            "text": [str(root / "text.jsonl")], "expected": expected, "tone8": media["audio/tone8.wav"],
            "frames": [media[f"frames/{i}.png"] for i in range(3)]}


def test_round_trip_through_the_data_layer(tool, inputs, tmp_path):
    summary = tool.prepare(str(tmp_path), llava=inputs["llava"], text=inputs["text"], samples_per_shard=3,
                           tokenizer_vocab=150, progress=False)
    assert summary["skipped"] == SKIPPED and summary["records"] == 20
    assert "img/nope.png" in summary["first_skipped"]["missing_media"]
    assert summary["first_skipped"]["bad_json"].startswith("more.jsonl:4: ")
    assert (summary["samples"], summary["images"], summary["videos"], summary["audios"]) == (9, 6, 1, 2)
    shards = list_shards(str(tmp_path))
    assert shards == summary["shards"] == [str(tmp_path / f"data-00000{i}.tar") for i in range(3)]
    raws = index_shards(shards)
    assert [r.shard for r in raws] == [shards[i // 3] for i in range(9)]
    for raw, (key, turns, images, audios) in zip(raws, inputs["expected"], strict=True):
        assert raw.key == key and "." not in raw.key
        assert parse_conversation(raw.conversation) == turns
        assert raw_images(raw) == images
        if audios is not None:
            assert raw_audios(raw) == audios
        assert raw_videos(raw) == ([inputs["frames"]] if key.endswith("_v") else [])
    with tarfile.open(shards[0]) as tar:  # one medium: KEY.ext; several: KEY.N.ext, placeholder order
        names = tar.getnames()
    assert names == ["00000000_img_1_a.json", "00000000_img_1_a.png", "00000001_b.json", "00000001_b.jpg",
                     "00000002_c.json", "00000002_c.0.png", "00000002_c.1.png", "00000002_c.wav"]
    with tarfile.open(shards[1]) as tar:  # a video's frames: KEY.video.N.ext, always numbered
        assert tar.getnames()[:5] == ["00000003_v.json", "00000003_v.jpg", "00000003_v.video.0.png",
                                      "00000003_v.video.1.png", "00000003_v.video.2.png"]

    # 8-bit WAV became 16-bit with the same samples, scaled (as the GIF became PNG above).
    ((ext, converted),) = raw_audios(raws[4])
    with wave.open(io.BytesIO(converted)) as f, wave.open(io.BytesIO(inputs["tone8"])) as g:
        assert (ext, f.getsampwidth(), f.getframerate()) == ("wav", 2, g.getframerate())
        new = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        old = np.frombuffer(g.readframes(g.getnframes()), np.uint8)
    np.testing.assert_array_equal(new, (old.astype(np.int16) - 128) * 256)

    # The loader turns every written sample into training inputs; plain text is all under the loss.
    tokenizer = OmniTokenizer(summary["tokenizer"])
    cfg = OmniConfig()
    cfg.data.path = str(tmp_path)
    samples = [build_sample(raw, tokenizer, cfg) for raw in raws]
    # the frames, then the image
    assert len(decoded_images(samples[3])) == 4 and image_times(samples[3]) == [0, 1, 2, 0]
    for sample, text in zip(samples[7:], TEXTS):
        trained = sample.labels[sample.loss_mask.bool()].tolist()
        assert trained == [*tokenizer.encode(text), tokenizer.end_id]
        assert tokenizer.decode(trained[:-1]) == text


def test_shard_byte_limit_and_determinism(tool, inputs, tmp_path):
    limit = 3 * 10240  # tar files grow in 10 KiB records; the two 16-bit clips take 16 KB each
    for run in ("a", "b"):
        tool.prepare(str(tmp_path / run), llava=inputs["llava"][:1], samples_per_shard=100, max_shard_bytes=limit,
                     progress=False)
    shards = list_shards(str(tmp_path / "a"))
    assert [len(index_shards([s])) for s in shards] == [3, 3]  # the 4th sample would pass the limit
    assert all(os.path.getsize(s) <= limit for s in shards)
    for shard in shards:  # same input, same options: byte-identical shards
        assert (tmp_path / "b" / os.path.basename(shard)).read_bytes() == open(shard, "rb").read()
    assert sorted(os.listdir(tmp_path / "a")) == ["data-000000.tar", "data-000001.tar"]  # no .tmp left


def test_existing_shards_need_overwrite(tool, inputs, tmp_path):
    tool.prepare(str(tmp_path), text=inputs["text"], samples_per_shard=1, progress=False)
    assert len(list_shards(str(tmp_path))) == 2
    with pytest.raises(FileExistsError, match="--overwrite"):
        tool.prepare(str(tmp_path), text=inputs["text"], progress=False)
    tool.prepare(str(tmp_path), text=inputs["text"], overwrite=True, progress=False)
    assert list_shards(str(tmp_path)) == [str(tmp_path / "data-000000.tar")]  # no stale shard left


def test_nothing_written_exits_1(tool, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"content": "no text key"}\n[1, 2]\n')
    assert tool.main(["--out", str(tmp_path / "out"), "--text", str(tmp_path / "bad.jsonl")]) == 1
    out, err = capsys.readouterr()
    assert "0 samples" in out and "no_text 1" in out and "bad_record 1" in out and "nothing written" in err
    assert not os.listdir(tmp_path / "out")


def test_progress_line(tool):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log = io.StringIO()
    bar = tool.Progress(4, log)
    bar.update(1)  # not a terminal: a line every 30 s, and the last
    bar.update(4, last=True)
    assert log.getvalue().count("\n") == 1 and log.getvalue().startswith("4/4 records (100.0%)")
    assert "/s  ETA 0:00:00" in log.getvalue()
    screen = Terminal()
    bar = tool.Progress(2, screen)
    bar.update(1, last=False)
    bar.started -= 1.0  # pretend a second passed: 1 record/s, one to go
    bar.shown -= 1.0
    bar.update(1)
    bar.update(2, last=True)
    lines = screen.getvalue().split("\r")
    assert lines[1].startswith("1/2 records (50.0%)") and "ETA 0:00:01" in lines[1]
    assert lines[-1].startswith("2/2 records (100.0%)") and lines[-1].endswith("\n")


def test_command_line(inputs, tmp_path):
    proc = subprocess.run([sys.executable, TOOL, "--out", str(tmp_path), "--llava", *inputs["llava"], "--text",
                           *inputs["text"], "--samples-per-shard", "5", "--train-tokenizer", "150"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"prepare_data: 9 samples (6 images, 1 videos, 2 audio clips) in 2 shards -> {tmp_path}")
    assert lines[1] == "prepare_data: skipped 11 of 20 records"
    assert [line.split()[:2] for line in lines[2:10]] == [[r, str(n)] for r, n in SKIPPED.items()]
    assert lines[10].startswith("prepare_data: tokenizer (vocab ")
    assert proc.stderr.strip().splitlines()[-1].startswith("20/20 records (100.0%)")
    assert sorted(os.listdir(tmp_path)) == ["data-000000.tar", "data-000001.tar", "tokenizer.model", "tokenizer.vocab"]



def test_hugging_face_tokenizer(tool, inputs, tmp_path):
    """--tokenizer HF_DIR: its files are copied where data.tokenizer finds them by default, and a
    record it cannot tokenize is skipped."""
    folder = qwen2_vl(str(tmp_path / "qwen2_vl"))
    out = tmp_path / "out"
    summary = tool.prepare(str(out), llava=inputs["llava"], text=inputs["text"], hf_tokenizer=folder, progress=False)
    # "bad <|end|> token" is text to it; the two audio records have no Qwen2-Audio tokens in a Qwen2-VL tokenizer.
    skipped = {**SKIPPED, "unsupported_media": SKIPPED["unsupported_media"] + 2}
    del skipped["reserved_token"]
    assert summary["skipped"] == skipped and summary["samples"] == 8 and summary["tokenizer"] == str(out)
    assert summary["first_skipped"]["unsupported_media"] == (
        f"llava.json[2] (id 'c'): tokenizer {folder} has no tokens for "
        "<audio> (knows: Qwen2-Audio <|audio_bos|><|AUDIO|><|audio_eos|>)")
    assert sorted(os.listdir(out)) == ["chat_template.jinja", "data-000000.tar", "tokenizer.json",
                                       "tokenizer_config.json"]
    cfg = OmniConfig()
    cfg.data.path = str(out)
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    samples = [build_sample(raw, tokenizer, cfg) for raw in index_shards(summary["shards"])]
    assert len(samples) == 8
    assert tokenizer.decode(samples[-2].labels[samples[-2].loss_mask.bool()]) == "bad <|end|> token<|im_end|>"
    with pytest.raises(ValueError, match="give one"):
        tool.prepare(str(out), text=inputs["text"], tokenizer_vocab=150, hf_tokenizer=folder, overwrite=True)
    (out / "tokenizer.model").write_bytes(b"")
    with pytest.raises(FileExistsError, match="holds a tokenizer.model, which data.tokenizer would default to"):
        tool.prepare(str(out), text=inputs["text"], hf_tokenizer=folder, overwrite=True)


def test_bad_files_and_text_are_named_skips(tmp_path):
    """A WAV whose fmt chunk overruns the file (wave's bare RuntimeError), bytes no image format
    has (Pillow's message names a BytesIO object), a lone surrogate in a turn (not writable as
    UTF-8, nor printable): each a skip naming the record and the file, the rest written."""
    overrun = bytearray(wav(2))
    overrun[16:20] = (1000).to_bytes(4, "little")  # fmt chunk: 1000 bytes, more than the file holds
    (tmp_path / "overrun.wav").write_bytes(bytes(overrun))
    (tmp_path / "noise.png").write_bytes(b"\x00not an image at all" * 8)
    (tmp_path / "red.png").write_bytes(png(28, 28))
    lines = [json.dumps({"id": "a", "audio": "overrun.wav", "conversations": human_gpt("<audio>", "x")}),
             json.dumps({"id": "i", "image": "noise.png", "conversations": human_gpt("<image>", "x")}),
             '{"id": "s", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "\\udc00!"}]}',
             "[" * 100_000,  # nested deeper than Python's stack
             json.dumps({"id": "ok", "image": "red.png", "conversations": human_gpt("<image>", "red")})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, TOOL, "--out", str(tmp_path / "out"), "--llava", str(tmp_path / "in.jsonl")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "1 samples" in proc.stdout and "skipped 4 of 5 records" in proc.stdout
    assert "bad_audio 1 (first: in.jsonl:1 (id 'a'): overrun.wav: undecodable .wav (a chunk overruns the file))" \
        in proc.stdout
    assert ("bad_image 1 (first: in.jsonl:2 (id 'i'): noise.png: undecodable image (not a format Pillow knows))"
            in proc.stdout) and "object at 0x" not in proc.stdout
    assert ("bad_json 2 (first: in.jsonl:3 (id 's'): a lone surrogate, not UTF-8 text, in "
            "conversations[1].value ('\\udc00' at character 0))") in proc.stdout
    assert [raw.key for raw in index_shards(list_shards(str(tmp_path / "out")))] == ["00000000_ok"]


def test_help_shows_the_record_layout():
    proc = subprocess.run([sys.executable, TOOL, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0
    example = proc.stdout[proc.stdout.index("--llava records"):].split("\n  ", 1)[1].split("\n  \"image\"")[0]
    record = json.loads(example)  # the example record is real JSON
    assert record["conversations"][0] == {"from": "human", "value": "<image>\nWhat is on the mat?"}
    assert '{"id": "doc-1", "text": "Any document."}' in proc.stdout
