"""Choose one workload's keep-alive and pre-warm from its learned idle-time histogram.

The paper this follows (Shahrad et al., "Serverless in the Wild", USENIX ATC 2020) takes fixed percentiles of
the idle-time histogram: pre-warm at the 5th, keep alive to the 99th, and falls back to a fixed keep-alive when
the histogram is not representative. Here the percentiles are chosen per workload, from its objective: every
candidate (keep alive k after the last activity; or scale in at once, pre-warm at p, keep alive until k) is
scored on the histogram for the GPU time it would have held and the requests it would have made wait, and the
cheapest candidate whose estimated cold-start share meets the objective wins. Two limits keep that honest:

* the choice minimises GPU time + price x requests that wait. The price starts at ``Params.min_price_s``
  GPU-seconds per request (sparing requests that cheaply is always worth it, even below the objective: a
  margin for a young history; ``min_price``: a tiny one once the history has seen its daily cycle) and
  doubles until the objective is met, up to a cap that follows the objective (``price_cap``: ``Params.price_s``
  at 1 %, in proportion for a tighter one). The objective is the user's contract; the cap exists only so that
  a workload no keep-alive or pre-warm can serve within it (sparse, unpredictable traffic) does not pin a GPU:
  past it the objective is given up, and said so, for the cheapest candidate at that price;
* the objective is a budget over the workload's history: the learner counts the requests its own decisions
  made wait (``State.waited``), and a workload over budget aims lower, one under budget a little higher, by at
  most ``Params.budget_span`` either way (``_target``);
* with too little history (``Params.min_idle_times``) it decides nothing: the policy's own settings apply.

Idle times beyond the histogram's 4 hours cannot be covered by a relative pre-warm; one keep-alive
(``Params.long_keep_alive_s``, 12 hours) may hold through them as a last resort: only where nothing else meets
the objective and it does (a few long pauses, each ending in a heavy burst). When such idle times end in the
same half hour on most days, the learner pre-warms that half hour (``daily``), a simple time-of-day predictor
in place of the paper's ARIMA.

A pre-warm costs a model load on a GPU, and a wrong pre-warm is GPU time thrown away: both are in the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from .state import BIN_S, BINS, SLOT_S, SLOTS, Params, State

MAX_CANDIDATES = 48      # per axis; a histogram with more non-empty bins is sampled at its quantiles
TAIL_PIECES = 8         # the unseen idle time is spread over this many points of the tail


@dataclass(frozen=True)
class Decision:
    """What to do after an activity ends. Times in seconds.

    ``keep_alive_s``: the cooldown (idle time before 1 -> 0); None: the policy's own cooldown (too little
    history). ``prewarm``: (start, end) after the activity ended during which one replica is held warm (a floor
    that ends by itself). ``daily``: (start, end) seconds of the UTC day to hold one replica warm."""

    mode: str                                  # "policy", "keep-alive" or "pre-warm"
    keep_alive_s: float | None
    prewarm: tuple[float, float] | None = None
    daily: tuple[tuple[float, float], ...] = ()
    share: float = 0.0                         # estimated share of requests meeting a cold start
    idle_times: float = 0.0                    # faded idle times the choice rests on
    reason: str = ""

    def summary(self) -> str:
        if self.mode == "policy":
            return f"policy settings ({self.reason})"
        out = f"keep-alive {self.keep_alive_s:g}s"
        if self.prewarm:
            out += f", pre-warm {self.prewarm[0]:g}-{self.prewarm[1]:g}s after the last request"
        for a, b in self.daily:
            out += f", warm daily {_hhmm(a)}-{_hhmm(b)} UTC"
        return f"{out} (estimated cold-start share {self.share * 100:.2f}%, {self.idle_times:.0f} idle times)"


def _hhmm(s: float) -> str:
    s = int(s) % 86400
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}"


def _sample(ix: list[int], n: int) -> list[int]:
    if len(ix) <= n:
        return ix
    return sorted({ix[round(k * (len(ix) - 1) / (n - 1))] for k in range(n)})


def decide(s: State, p: Params, t: float, objective: float, startup_s: float, polling_s: float,
           fallback_s: float = 0.0) -> Decision:
    """The decision at time ``t`` (an activity just ended). ``startup_s``: scheduling + pull + model load of a
    replica; ``polling_s``: KEDA's polling interval (a scale-in or a cron window is acted on at a poll);
    ``fallback_s``: the policy's keep-alive, which a young history (under ``Params.trust_idle_times``) may
    lengthen but not shorten (the first idle times say little about the tail)."""
    s.changes = 0
    fade = 2.0 ** ((t - s.t0) / p.half_life_s)
    eff = sum(v[0] for v in s.bins.values()) / fade
    if eff < p.min_idle_times or s.requests <= 0:
        return Decision("policy", None, share=0.0, idle_times=eff,
                        reason=f"{eff:.1f} idle times learned, {p.min_idle_times:g} needed")
    c0 = p.min_keep_alive_s
    P = polling_s
    S = startup_s
    lead = prewarm_lead(S, P)
    R = s.requests
    bins = s.bins
    oob = bins.get(BINS, [0.0, 0.0, 0.0])
    w_o, h_o = oob[0], oob[1]
    idx = sorted(i for i in bins if i < BINS and bins[i][0] > 0)
    if p.prior_unseen > 0:
        # An idle time longer than any seen so far, counted ``prior_unseen`` times, with the head of the
        # longest ones seen: short histories stay cautious, long ones barely notice it. Until an idle time
        # past the histogram has been seen, the unseen one is spread log-uniformly from the longest seen to
        # ``tail_factor`` times it (the rest beyond reach): idle times that keep growing a little (traffic
        # thinning out over the day) are then worth a keep-alive a little longer than any seen, where a
        # keep-alive ending at the longest seen meets each new one with a cold start.
        top = bins[BINS] if BINS in bins and bins[BINS][0] > 0 else bins[idx[-1]] if idx else None
        head = top[1] / top[0] if top else 1.0
        u = p.prior_unseen * fade
        if p.tail_factor > 1.0 and w_o <= 0:
            bins = {i: list(v) for i, v in s.bins.items()}      # a copy: the stored state stays observed only
            x0 = (idx[-1] + 1) * BIN_S if idx else c0
            for j in range(TAIL_PIECES):
                x = x0 * p.tail_factor ** ((j + 0.5) / TAIL_PIECES)
                i = min(int(x // BIN_S), BINS)
                if i >= BINS:
                    w_o += u / TAIL_PIECES
                    h_o += u / TAIL_PIECES * head
                else:
                    v = bins.setdefault(i, [0.0, 0.0, 0.0])
                    v[0] += u / TAIL_PIECES
                    v[1] += u / TAIL_PIECES * head
                    v[2] += u / TAIL_PIECES * x
            idx = sorted(i for i in bins if i < BINS and bins[i][0] > 0)
        else:
            w_o += u
            h_o += u * head
    pw, ph, pg = [0.0], [0.0], [0.0]
    for i in idx:
        v = bins[i]
        pw.append(pw[-1] + v[0])
        ph.append(ph[-1] + v[1])
        pg.append(pg[-1] + v[2])
    m = len(idx)
    W, H = pw[m], ph[m]

    def upto(limit: float) -> int:
        """How many non-empty bins lie wholly below ``limit`` seconds."""
        n = 0
        while n < m and (idx[n] + 1) * BIN_S <= limit + 1e-9:
            n += 1
        return n

    young = eff < p.trust_idle_times
    floor = fallback_s if young else 0.0
    m0 = upto(c0)
    cands: list[tuple[float, float, float, float | None, float]] = []   # (cost, waits, keep, prewarm, unused)
    ks = [j for j in range(m) if (idx[j] + 1) * BIN_S > c0 and (idx[j] + 1) * BIN_S <= p.max_keep_alive_s]
    ks = _sample(ks, MAX_CANDIDATES)
    # keep alive k after the last activity, no pre-warm
    for n, k in [(m0, c0)] + [(j + 1, (idx[j] + 1) * BIN_S) for j in ks]:
        if k < floor:
            n, k = upto(floor), floor
        cold_w = W - pw[n] + w_o
        cands.append((pg[n] + cold_w * (k + P + S), H - ph[n] + h_o, k, None, 0.0))
    # A last resort: keep alive through the idle times past the histogram too (a few long pauses, each ending
    # in a burst a cold start would hold hundreds of requests of). Their idle seconds are known in sum (each
    # counted up to a day); the unseen longer one is put at ``tail_factor`` times their mean, held through
    # when that is within the keep-alive. Offered only when nothing else meets the objective (below).
    longs: list[tuple[float, float, float, float | None, float]] = []
    if p.long_keep_alive_s > p.max_keep_alive_s and oob[0] > 0:
        kl = p.long_keep_alive_s
        unseen_w, unseen_h = w_o - oob[0], h_o - oob[1]
        x = p.tail_factor * max(oob[2] / oob[0], p.max_keep_alive_s)
        if x <= kl:
            longs.append((pg[m] + oob[2] + unseen_w * x, 0.0, kl, None, 0.0))
        else:
            longs.append((pg[m] + oob[2] + unseen_w * (kl + P + S), unseen_h, kl, None, 0.0))
    # scale in after c0, pre-warm so that a replica is ready at p, keep it until k
    base_cost = pg[m0]
    for j in _sample([j for j in range(m0, m) if idx[j] * BIN_S - lead >= c0 + P and not young], MAX_CANDIDATES):
        pre = idx[j] * BIN_S
        a = pre - lead
        mid_cost = (pw[j] - pw[m0]) * (c0 + P + S)
        mid_wait = ph[j] - ph[m0]
        for l in _sample(list(range(j, m)), MAX_CANDIDATES):
            k = (idx[l] + 1) * BIN_S
            if k > p.max_keep_alive_s:
                break
            if pw[l + 1] - pw[j] < p.min_prewarm_hit * (W - pw[j] + w_o):
                continue                     # most pre-warms would go unused: not a pattern, noise
            warm = (pw[l + 1] - pw[j]) * (c0 + P - a) + (pg[l + 1] - pg[j])
            after_w = W - pw[l + 1] + w_o
            after = after_w * (c0 + P + (k + c0 + P - a) + S)
            cands.append((base_cost + mid_cost + warm + after, mid_wait + H - ph[l + 1] + h_o, k, a, after_w))
    # The price of a waiting request: at least ``min_price_s`` (sparing requests that cheaply is always worth
    # it), raised until the objective is met, at most the cap (beyond, the objective is given up: a workload
    # no keep-alive or pre-warm can serve within its objective must not pin a GPU for it).
    # The long keep-alive only where it turns a given-up objective into a met one: a workload that meets its
    # objective without it must not hold a GPU for half a day to spare a few more requests, and one that
    # misses it even so must not either.
    target = _target(s, p, objective)
    limit = target * R
    cap = price_cap(p, target)
    least = min_price(s, p, t)
    price, pick = _escalate(cands, least, cap, limit)
    if pick[1] > limit + 1e-9 and longs:
        price_l, pick_l = _escalate(cands + longs, least, cap, limit)
        if pick_l[1] <= limit + 1e-9:
            price, pick = price_l, pick_l
    why = (f"meets the objective at {price:g} GPU-seconds per request spared" if pick[1] <= limit + 1e-9
           else f"the objective would cost more than {cap:g} GPU-seconds per request spared")
    if target != objective:
        why += f"; {s.waited / s.judged * 100:.2f}% of requests waited so far, aiming at {target * 100:.2f}%"
    cost, waits, k, a, _ = pick
    daily = _daily(s, p, t, fade, lead)
    share = waits / R
    if a is None:
        return Decision("keep-alive", k, None, daily, share, eff, why)
    return Decision("pre-warm", c0, (a, k), daily, share, eff, why)


def prewarm_lead(startup_s: float, polling_s: float) -> float:
    """How long before it is needed a pre-warm starts loading: a start-up, a poll, and a minute (a cron
    window's unit)."""
    return startup_s + polling_s + 60.0


def min_price(s: State, p: Params, t: float) -> float:
    """The GPU-seconds always worth spending to spare one request a cold start, even below the objective.

    A young history's estimate of its own tail is unsure, and sparing cheaply what it can is a margin against
    that: on one day of traffic (the Azure tuning half) ``Params.min_price_s`` lowered the fleet's waits.
    Per request, that margin grows with the burst a cold start holds: a busy workload whose rare long pause
    ends in hundreds of requests was held warm for hours at a share far below its objective. A history of
    ``Params.settled_days`` (faded) has seen its daily cycle; from then on the learner spends only what the
    objective asks (``Params.settled_min_price_s``, a tie-breaker)."""
    if p.settled_days > 0 and s.days(t, p) >= p.settled_days:
        return p.settled_min_price_s
    return p.min_price_s


def price_cap(p: Params, objective: float) -> float:
    """The most GPU-seconds spent to spare one request a cold start: ``Params.price_s`` at a 1 % objective or
    a looser one, and in proportion for a tighter one (half the share allowed to wait, twice the price). The
    objective is the user's contract and the cap follows it; it exists only so that a workload whose objective
    no keep-alive or pre-warm can meet does not hold a GPU for it."""
    return p.price_s * max(1.0, 0.01 / objective)


def _target(s: State, p: Params, objective: float) -> float:
    """The objective as a budget over the workload's history: when more of its requests waited than the
    objective allows (as far as the learner could tell), aim lower; when fewer, a little higher -- by at most
    ``Params.budget_span`` either way, so one bad or good stretch cannot swing the choice far."""
    if p.budget_span <= 1.0 or s.judged <= 0:
        return objective
    realized = s.waited / s.judged
    ratio = objective / max(realized, objective / p.budget_span)
    return objective * min(max(ratio, 1.0 / p.budget_span), p.budget_span)


def _escalate(cands: list[tuple[float, float, float, float | None, float]], price: float, cap: float,
              limit: float) -> tuple[float, tuple[float, float, float, float | None, float]]:
    """The cheapest candidate at ``price``, the price doubled (up to ``cap``) while it makes more requests
    wait than ``limit``."""
    pick = _best(cands, price)
    while pick[1] > limit + 1e-9 and price < cap:
        price = min(price * 2.0, cap)
        pick = _best(cands, price)
    return price, pick


def _best(cands: list[tuple[float, float, float, float | None, float]],
          price: float) -> tuple[float, float, float, float | None, float]:
    return min(cands, key=lambda c: (c[0] + price * c[1], c[1]))


def _daily(s: State, p: Params, t: float, fade: float, lead: float) -> tuple[tuple[float, float], ...]:
    """Half hours of the UTC day in which a wake-up after a long idle time came on most days, widened by
    ``lead`` before so that the replica is ready when the half hour starts."""
    days = s.days(t, p)
    if days < p.daily_min_days or not s.slots:
        return ()
    hot = [i for i in range(SLOTS) if s.slots.get(i, 0.0) / fade / days >= p.daily_min_share]
    out: list[tuple[float, float]] = []
    for i in hot:
        a, b = i * SLOT_S - lead, (i + 1) * SLOT_S
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return tuple(((a % 86400.0), (a % 86400.0) + (b - a)) for a, b in out)
