"""CMC as a candidate module that advances its branches with the batch calls (`probe_new_many`,
`probe_more_many`), as the built-in `core.controllers.cmc` does: one round trip to the sandbox's parent per burst
step instead of one per branch. Same decisions, answers and tokens as `cmc_candidate.py` and the built-in CMC;
benchmarks/bench_sandbox.py times both forms.
"""

from collections import deque

from core.primitives import beta_confidence, majority, vote_stats


class ConfidenceMomentum:
    def __init__(self, beta: float = 0.5, max_branches: int = 64, max_rounds: int = 500):
        b = min(1.0, max(0.0, float(beta)))
        self.n_init = max(2, round(2 + 6 * b))
        self.max_branch_use = min(max_branches, round(4 + 60 * b))
        self.warm_up = max(2, round(2 + 8 * b))
        self.abandon_patience = max(3, round(3 + 9 * b))
        self.t_ema = max(2, round(2 + 6 * b))
        self.ema_alpha = round(0.70 - 0.40 * b, 4)
        self.conf_thresh = round(0.85 + 0.12 * b, 4)
        self.delta_slack = round(0.04 - 0.03 * b, 4)
        self.burst_aligned = max(1, round(1 + 2 * b))
        self.widen_burst = max(1, round(1 + 3 * b))
        self.trend_thresh = round(0.04 - 0.03 * b, 4)
        self.min_complete = max(2, round(2 + 3 * b))
        self.max_rounds = max_rounds

    def solve(self, question):
        alpha = self.ema_alpha
        latest, finished, abandoned, probes, disagree = [], [], [], [], []
        pool = []  # final answers of finished branches, in finishing order

        def open_many(k):
            opened = question.probe_new_many(k)
            for ans, _, fin in opened:
                latest.append(ans)
                finished.append(fin)
                abandoned.append(False)
                probes.append(1)
                disagree.append(0)
                if fin:
                    pool.append(ans)
            return len(opened)

        open_many(self.n_init)
        if not latest:
            return None
        spawned = len(latest)
        ema = 0.0
        window = deque(maxlen=self.t_ema)
        for outer in range(self.max_rounds):
            winner, top1, top2 = vote_stats(pool)
            warm = outer >= self.warm_up
            ema = (1 - alpha) * ema + alpha * beta_confidence(top1, top2)
            window.append(ema)
            live = [i for i in range(len(latest)) if not abandoned[i] and not finished[i]]
            if warm and winner is not None:
                for i in live:
                    disagree[i] = disagree[i] + 1 if latest[i] != winner else 0
                stale = sorted((i for i in live if disagree[i] >= self.abandon_patience), key=lambda i: -disagree[i])
                for i in stale[: max(0, len(live) - 2)]:
                    abandoned[i] = True
                live = [i for i in live if not abandoned[i]]
            # Burst step r advances every branch still due in one batch; finished answers join the pool afterwards
            # in depth order, as if each branch had taken its whole burst in turn.
            order = sorted(live, key=lambda i: -probes[i])
            if warm and winner is not None and self.burst_aligned > 1:
                burst = [self.burst_aligned if latest[i] == winner else 1 for i in order]
            else:
                burst = None
            due = order
            for r in range(self.burst_aligned if burst else 1):
                if r:
                    due = [i for i, b in zip(order, burst, strict=True) if b > r and not finished[i]]
                if not due:
                    break
                for i, (ans, fin) in zip(due, question.probe_more_many(due), strict=True):
                    probes[i] += 1
                    latest[i] = ans
                    finished[i] = fin
            pool.extend([latest[i] for i in order if finished[i]])
            winner, top1, top2 = vote_stats(pool)
            ema = (1 - alpha) * ema + alpha * beta_confidence(top1, top2)
            window[-1] = ema
            delta = window[-1] - window[0] if len(window) >= 2 else 0.0
            if warm and len(pool) >= self.min_complete and ema >= self.conf_thresh and delta >= -self.delta_slack:
                return winner
            if all(f or a for f, a in zip(finished, abandoned, strict=True)):
                break
            if (spawned < self.max_branch_use and delta <= self.trend_thresh
                    and outer >= max(1, self.warm_up // 2) and ema < self.conf_thresh):
                spawned += open_many(min(self.widen_burst, max(0, min(self.max_branch_use, 64) - spawned)))
        if pool:
            return majority(pool)
        return majority([latest[i] for i in range(len(latest)) if not abandoned[i]])
