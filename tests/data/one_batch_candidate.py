"""One batch, confidence momentum: open every branch the question will get in one batch, then let CMC's
confidence-momentum rules decide when to stop; never open a branch later.

A branch opened late rarely finishes in time to vote, and opening more whenever the vote is still unsure is
where most of CMC's tokens go; so all branches start together and race. The finished answers form a pool in the
order branches finish (shorter, more decisive branches first); an exponential moving average (EMA) of the pool's
Beta confidence must be high and not falling before the controller answers. A branch whose intermediate answer
keeps disagreeing with the pool winner is abandoned (at least two keep going; a junk intermediate answer such
as "ERR" counts neither way), and branches that agree take longer bursts. The answer is the pool winner when confident, or the pool majority once every branch has finished
or been abandoned.

β sets two things: the batch size, 5 branches at β=0 rising to 59 at β=1 (steeply above β=0.6), and the strictness
of the stop rules, which follow CMC's schedule at strictness s = min(1, 0.2 + 1.6β)."""

from collections import deque

from core.primitives import beta_confidence, majority, vote_stats

JUNK = ("ERR", "")


class OneBatchMomentum:
    def __init__(self, beta: float = 0.5):
        b = min(1.0, max(0.0, float(beta)))
        self.max_branches = min(64, round(5 + 30 * b + 150 * max(0.0, b - 0.6) ** 2))
        s = min(1.0, 0.2 + 1.6 * b)              # strictness of the stop rules (CMC's schedule at β = s)
        self.warm_up = max(2, round(2 + 8 * s))
        self.patience = max(3, round(3 + 9 * s))
        self.t_ema = max(2, round(2 + 6 * s))
        self.alpha = round(0.70 - 0.40 * s, 4)
        self.conf_thresh = round(0.85 + 0.12 * s, 4)
        self.delta_slack = round(0.04 - 0.03 * s, 4)
        self.burst_aligned = max(1, round(1 + 2 * s))
        self.min_complete = max(2, round(2 + 3 * s))

    def solve(self, question):
        latest, finished, abandoned, steps, disagree = [], [], [], [], []
        pool = []   # final answers, in the order branches finished
        for ans, _, fin in question.probe_new_many(self.max_branches):
            latest.append(ans)
            finished.append(fin)
            abandoned.append(False)
            steps.append(1)
            disagree.append(0)
            if fin:
                pool.append(ans)
        if not latest:
            return None
        ema = 0.0
        window = deque(maxlen=self.t_ema)
        for outer in range(500):
            # 1. the pool's confidence and its momentum
            winner, top1, top2 = vote_stats(pool)
            warm = outer >= self.warm_up
            ema = (1 - self.alpha) * ema + self.alpha * beta_confidence(top1, top2)
            window.append(ema)
            # 2. abandon branches that keep disagreeing with the pool winner (always keep two going)
            live = [i for i in range(len(latest)) if not abandoned[i] and not finished[i]]
            if warm and winner is not None:
                for i in live:
                    if latest[i] not in JUNK:   # a junk probe ("ERR") neither agrees nor disagrees
                        disagree[i] = disagree[i] + 1 if latest[i] != winner else 0
                stale = sorted((i for i in live if disagree[i] >= self.patience), key=lambda i: -disagree[i])
                for i in stale[: max(0, len(live) - 2)]:
                    abandoned[i] = True
                live = [i for i in live if not abandoned[i]]
            # 3. advance the live branches, deepest first; those agreeing with the winner take a longer burst
            order = sorted(live, key=lambda i: -steps[i])
            if warm and winner is not None and self.burst_aligned > 1:
                burst = [self.burst_aligned if latest[i] == winner else 1 for i in order]
            else:
                burst = [1] * len(order)
            for r in range(max(burst, default=1)):
                due = [i for i, n in zip(order, burst) if n > r and not finished[i]]
                if not due:
                    break
                for i, (ans, fin) in zip(due, question.probe_more_many(due)):
                    steps[i] += 1
                    latest[i] = ans
                    finished[i] = fin
            pool.extend([latest[i] for i in order if finished[i]])
            # 4. the confidence after this round replaces the newest window entry; its trend over the window
            winner, top1, top2 = vote_stats(pool)
            ema = (1 - self.alpha) * ema + self.alpha * beta_confidence(top1, top2)
            window[-1] = ema
            delta = window[-1] - window[0] if len(window) >= 2 else 0.0
            # 5. answer when confident and the confidence is not falling
            if warm and len(pool) >= self.min_complete and ema >= self.conf_thresh and delta >= -self.delta_slack:
                return winner
            if all(f or a for f, a in zip(finished, abandoned)):
                break
        if pool:
            return majority(pool)
        return majority([latest[i] for i in range(len(latest)) if not abandoned[i]])
