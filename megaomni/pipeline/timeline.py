"""What each rank did when, in one step: from the simulator or recorded by the executor. Reports
step time, per-rank busy and idle time and the bubble fraction, and draws itself as a PNG (one
row per rank, a colour per action kind)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from megaomni.pipeline.plan import ENC_B, ENC_F, LLM_B, LLM_F

COLOURS = {LLM_F: (66, 133, 244), LLM_B: (15, 71, 160), ENC_F: (251, 188, 5), ENC_B: (214, 120, 0)}
LABELS = {LLM_F: "LLM forward", LLM_B: "LLM backward", ENC_F: "encoder forward", ENC_B: "encoder backward"}


@dataclass(frozen=True)
class Event:
    rank: int
    kind: str
    micro: int
    stage: int
    start: float  # seconds from the step's start
    end: float
    # Recorded on a GPU: when the host issued the action (seconds from the step's start, same
    # origin). An action whose start follows its issue closely and whose end follows the host's
    # was waiting on the host (launch-bound); one issued well before its start was queued.
    host_start: float | None = None
    host_end: float | None = None
    call: tuple[int, ...] = ()  # an encoder call's micro-batches, when it covers several

    @property
    def label(self) -> str:
        return "+".join(map(str, self.call or (self.micro,)))


@dataclass
class Timeline:
    pp: int
    events: list[Event]
    step_time: float

    def busy(self) -> list[float]:
        """Seconds each rank computed (encoder and LLM work alike)."""
        busy = [0.0] * self.pp
        for e in self.events:
            busy[e.rank] += e.end - e.start
        return busy

    @property
    def bubble(self) -> float:
        """The fraction of rank-time spent idle within the step."""
        if self.step_time <= 0:
            return 0.0
        return 1.0 - sum(self.busy()) / (self.pp * self.step_time)

    def summary(self) -> dict:
        busy = self.busy()
        return {"step_time_s": self.step_time, "bubble": self.bubble, "busy_s": busy,
                "idle_s": [self.step_time - b for b in busy]}

    def to_dict(self) -> dict:
        return {**self.summary(), "pp": self.pp, "events": [asdict(e) for e in self.events]}

    @classmethod
    def from_dict(cls, data: dict) -> "Timeline":
        # Timelines recorded before Event.group was renamed Event.call hold the key "group".
        events = [Event(**{k: v for k, v in e.items() if k not in ("call", "group")},
                        call=tuple(e.get("call", e.get("group", ())))) for e in data["events"]]
        return cls(data["pp"], events, data["step_time_s"])

    def draw(self, path: str, title: str = "", width: int = 1400, row: int = 36) -> None:
        """Write the timeline as a PNG at ``path``."""
        from PIL import Image, ImageDraw

        left, top, legend = 70, 30 if title else 8, 28
        height = top + self.pp * row + legend + 24
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        if title:
            draw.text((left, 8), title, fill="black")
        span = width - left - 20
        scale = span / self.step_time if self.step_time > 0 else 0.0
        for rank in range(self.pp):
            y = top + rank * row
            draw.text((8, y + row // 2 - 6), f"rank {rank}", fill="black")
            draw.rectangle([left, y + 2, left + span, y + row - 4], outline=(200, 200, 200))
        for e in self.events:
            y = top + e.rank * row
            x0, x1 = left + e.start * scale, left + max(e.end * scale, e.start * scale + 1)
            draw.rectangle([x0, y + 3, x1, y + row - 5], fill=COLOURS[e.kind])
            if x1 - x0 > 7 * len(e.label):
                draw.text((x0 + 2, y + row // 2 - 6), e.label, fill="white")
        y = top + self.pp * row + 6
        x = left
        for kind, label in LABELS.items():
            draw.rectangle([x, y, x + 14, y + 12], fill=COLOURS[kind])
            draw.text((x + 18, y), label, fill="black")
            x += 150
        draw.text((x, y), f"step {self.step_time * 1e3:.1f} ms, bubble {self.bubble:.1%}", fill="black")
        image.save(path)
