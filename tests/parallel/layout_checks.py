"""That a parity run's layout took effect, from its ranks' probes (tests/parallel/probe.py) and the
one-process reference's: a run that matched the reference because it silently ran unsplit (or
without its pipeline's encoders moved) fails here.

- ranks per group: each megatron-core process group has the layout's size, and the ranks tile it;
- parameters per rank: every LLM layer sits on exactly one pipeline stage (all of its TP / DP /
  CP ranks), a stage's chunks hold consecutive layers; per layer a rank holds 1/tp of the
  reference's tensor-parallel elements, 1/(ep*etp) of its experts' and all of the rest; the
  LLM's other parameters (embedding, final norm, output layer) likewise, each on some stage;
- which ranks encoded: under ``pipeline.schedule=joint`` every rank holds the encoders (1/encoder.tp
  of their tensor-parallel elements) and ran them (a forward hook counts the calls); under
  megatron-core's schedule only pipeline stage 0 holds and ran them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    cp: int
    ep: int
    vpp: int
    dp: int
    encoder_tp: int
    joint: bool

    @classmethod
    def requested(cls, overrides: tuple[str, ...], nproc: int) -> "Layout":
        """The layout the overrides ask for (unset: one), read from the overrides themselves
        rather than from the run's config, which is what is being checked."""
        values = dict(o.split("=", 1) for o in overrides)

        def size(key: str) -> int:
            return int(values.get(f"parallel.{key}", 1))

        tp, pp, cp = size("tp"), size("pp"), size("cp")
        return cls(tp=tp, pp=pp, cp=cp, ep=size("ep"), vpp=size("vpp"), dp=nproc // (tp * pp * cp),
                   encoder_tp=size("encoder.tp"), joint=values.get("pipeline.schedule") == "joint")

    def shares(self, kind: str, encoder: bool = False) -> int:
        """Over how many ranks a parameter of ``kind`` (probe.py) is split."""
        tp = self.encoder_tp if encoder else self.tp
        return {"split": tp, "expert": self.ep, "split_expert": self.ep * self.tp}.get(kind, 1)


def _assert_shares(place: str, held: dict, reference: dict, layout: Layout, rank: int) -> None:
    expected = {kind: n // layout.shares(kind) for kind, n in reference.items()}
    assert held == expected, (rank, place, held, expected, layout)


def _assert_encoder_shares(name: str, held: dict, reference: dict, layout: Layout, rank: int) -> None:
    """In total only: an encoder replicated over the LLM's TP ranks is unmarked as tensor-parallel."""
    expected = sum(n // layout.shares(kind, encoder=True) for kind, n in reference.items())
    assert sum(held.values()) == expected, (rank, name, held, expected, layout)


def assert_layout_took_effect(reference: list[dict], probes: list[dict], layout: Layout) -> None:
    assert len(reference) == 1
    ref = reference[0]
    nproc = len(probes)
    assert nproc == layout.tp * layout.pp * layout.cp * layout.dp, (nproc, layout)
    sizes = {"tp": layout.tp, "pp": layout.pp, "cp": layout.cp, "dp": layout.dp, "ep": layout.ep, "etp": layout.tp}
    for rank, probe in enumerate(probes):
        assert {k: g["size"] for k, g in probe["groups"].items()} == sizes, (rank, probe["groups"])
    coords = {tuple(p["groups"][k]["rank"] for k in ("tp", "pp", "cp", "dp")) for p in probes}
    assert len(coords) == nproc  # each rank its own place in the grid

    ref_layers = [n for chunk in ref["chunks"] for n in chunk]
    stages: dict[int, list[list[int]]] = {}
    for rank, probe in enumerate(probes):
        chunks, stage = probe["chunks"], probe["groups"]["pp"]["rank"]
        assert len(chunks) == layout.vpp and all(chunks), (rank, chunks)
        assert all(c == list(range(c[0], c[-1] + 1)) for c in chunks), (rank, chunks)
        assert stages.setdefault(stage, chunks) == chunks, (rank, stage, chunks)  # a stage's ranks agree
        for number in (n for c in chunks for n in c):
            _assert_shares(f"layer {number}", probe["params"][str(number)], ref["params"][str(number)], layout, rank)
        for place, held in probe["params"].items():
            if place.startswith("llm."):
                _assert_shares(place, held, ref["params"][place], layout, rank)
    held_layers = sorted(n for chunks in stages.values() for c in chunks for n in c)
    assert held_layers == sorted(ref_layers), (held_layers, ref_layers)  # each layer on one stage
    llm_places = {place for probe in probes for place in probe["params"] if place.startswith("llm.")}
    assert llm_places == {place for place in ref["params"] if place.startswith("llm.")}

    encoders = [name for name in ref["encoder_calls"]]
    assert encoders and all(ref["encoder_calls"][name] > 0 for name in encoders), ref["encoder_calls"]
    for rank, probe in enumerate(probes):
        encodes = layout.joint or probe["groups"]["pp"]["rank"] == 0
        for name in encoders:
            assert (probe["encoder_calls"].get(name, 0) > 0) == encodes, (rank, name, probe["encoder_calls"], layout)
            if encodes:
                _assert_encoder_shares(name, probe["params"][name], ref["params"][name], layout, rank)
            else:
                assert name not in probe["params"], (rank, name)
