"""How a trace is replayed: where it starts, what is scored, where it ends, and what a replica costs.

A trace is a slice of a workload's life, so both ends are choices, and they must not decide the answer:

* start ``warm`` (the default): the steady state the settings would have before the first request. The
  workload served a request just before the trace began, so it has ``max(minReplicas, 1)`` ready replicas
  and its cooldown runs from t = 0; but when the trace opens with an idle stretch longer than the cooldown (or
  has no request), it would be at rest by then whatever came before, so it starts at rest. ``cold``: idle
  for long (0 replicas when it scales to zero). Starting every trace cold makes the first request of every
  slice a cold start that the real workload, running for weeks, mostly would not have.
* warm-up: the first ``warm_up_s`` seconds are replayed but not counted (neither GPU time nor requests), so the
  scored part starts from the state the trace itself leads to.
* end: by default the replay runs until the last request is served and the workload is back at rest (the
  final cooldown is billed), and every configuration compared on one trace is billed over the same span
  (the longest of them, at rest after its own end). ``until_s`` cuts (or extends) the replay at a fixed time;
  a request still held at the cut is reported as ``cut``, never as failed.

``run_configs`` is the one place that applies these rules; ``simulate`` and ``recommend`` both go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .learned import LearnedConfig, simulate_learned
from .model import PodTiming, Result, ScalingConfig, simulate
from .traces import Trace

STARTS = ("warm", "cold")


@dataclass(frozen=True)
class Replay:
    start: str = "warm"
    warm_up_s: float = 0.0
    until_s: float | None = None             # None: until at rest
    gpus_per_replica: int | None = None      # None: derived from the workload (``gpus.per_replica``)
    learn_from: str = "keda-status"          # keep-alive: learned: what the learner is told (``learned.SIGNALS``)


def run_configs(trace: Trace, configs: Mapping[str, ScalingConfig | LearnedConfig], timing: PodTiming, replay: Replay,
                keep_timeline: bool = False, score_from: float | None = None) -> dict[str, Result]:
    """Each configuration on ``trace``, billed over one common span. ``score_from`` overrides the warm-up
    (the recommender scores held-out days of a trace replayed from its start)."""
    sf = replay.warm_up_s if score_from is None else score_from
    out = {name: replay_one(trace, cfg, timing, replay, keep_timeline, sf) for name, cfg in configs.items()}
    return settle([out], [trace], replay)[0] if replay.until_s is None else out


def replay_one(trace: Trace, cfg: ScalingConfig | LearnedConfig, timing: PodTiming, replay: Replay,
               keep_timeline: bool, score_from: float) -> Result:
    """One configuration on one trace; a ``LearnedConfig`` is replayed with its learner (``learned``)."""
    if isinstance(cfg, LearnedConfig):
        return simulate_learned(trace.arrivals, cfg.config, timing, replay.until_s, cfg.objective, cfg.params,
                                trace.day_offset(), keep_timeline, replay.start, score_from,
                                signal=cfg.signal).result
    return simulate(trace.arrivals, cfg, timing, replay.until_s, keep_timeline, replay.start, score_from)


def settle(runs: Sequence[Mapping[str, Result]], traces: Sequence[Trace], replay: Replay) -> list[dict[str, Result]]:
    """Bring every result of one trace to the same end: the trace's span or the latest time any of them came
    to rest, whichever is later. ``runs[i]`` holds the results on ``traces[i]``."""
    if replay.until_s is not None:
        return [dict(r) for r in runs]
    settled = []
    for results, tr in zip(runs, traces):
        end = max([tr.horizon] + [r.duration_s for r in results.values()])
        settled.append({k: r.extend_to(end) for k, r in results.items()})
    return settled


def merge(results: Sequence[Result]) -> Result:
    total = Result()
    for r in results:
        total = total.merge(r)
    return total
