"""Adaptive conformal on shifted replays: the realised risk with and without it.

    python -m benchmarks.bench_adaptive [--quick] [--json] [--config serve_config.yaml]
        [--seeds 0 1 2] [--n 3000] [--gamma 0.005] [--min-feedback 50]
        [--feedback user|strong] [--label-share 1.0]

The zoo's held-out test split (per seed) is replayed request by request, in order, through the
served policy: `offline.served.begin_run` and `calibration.cascade.run_cascade`, the router and
head verdicts and the artifact serving loads. Once with the calibrated thresholds (`static`),
once with `calibration.adaptive.AdaptiveConformal`, the class serving uses, stepped after each
request by the label POST /v1/feedback would carry: the zoo judge's verdict on the served
answer (`user`, a 'right'/'wrong' verdict) or the served answer compared with the top tier's
(`strong`, the 'strong' verdict, with `deployments.feedback.same_answer`). Streams:

- `unshifted`: the test split as drawn (the task mix the thresholds were calibrated on);
- `sub`: its subtraction queries only, a task mix the cheap tier gets wrong more often than
  calibration saw (the other families are easier);
- `drift`: the first half of the split as drawn, then only the second half's subtractions.

Risk is the loss each tier's threshold bounds: accepted there, wrong, and the top tier right,
over the requests that reached the tier (as `offline.served.realised_guarantees`). Cost is per
request, relative to always asking the top tier.

The artifact's tiers need a `CalibrationSample`; the zoo's has them since its derived version
5 (`offline.ladder_calibration`), and any artifact `calibrate` writes does.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.tables import table
from calibration.adaptive import AdaptiveConformal, tier_decisions
from calibration.artifact import CascadeArtifact
from calibration.cascade import CascadeOutcome, run_cascade
from calibration.config import AdaptiveArgs, AppArgs
from calibration.policy import CascadePolicyConfig, request_cost
from deployments.feedback import json_safe, same_answer
from models.served_calibration import served_artifact
from models.tasks import Judgement
from offline.replay import EvalSplit, load_split
from offline.served import begin_run

__all__ = ["STREAMS", "replay", "streams"]

STREAMS = ("unshifted", "sub", "drift")


def _subset(data: EvalSplit, idx: np.ndarray) -> EvalSplit:
    """The requests `idx` of a split, in that order (their cached answers, no new ones)."""
    pick = [int(i) for i in idx]
    rows = data.router
    if rows is not None:
        rows = type(rows)(
            [rows.policy[i] for i in pick], rows.p_complex[idx], rows.confidence[idx], rows.source
        )
    return EvalSplit(
        split=data.split,
        seed=data.seed,
        tasks=[data.tasks[i] for i in pick],
        tiers=data.tiers,
        answers={t: [data.answers[t][i] for i in pick] for t in data.tiers},
        judgements={t: [data.judgements[t][i] for i in pick] for t in data.tiers},
        feedback=data.feedback,
        router=rows,
    )


def streams(data: EvalSplit) -> dict[str, EvalSplit]:
    """The replayed streams of one split (see the module docstring)."""
    sub = np.array([t.family == "sub" for t in data.tasks])
    first = np.arange(data.n) < data.n // 2
    drift = np.concatenate([np.flatnonzero(first), np.flatnonzero(~first & sub)])
    return {
        "unshifted": data,
        "sub": _subset(data, np.flatnonzero(sub)),
        "drift": _subset(data, drift),
    }


def replay(
    policy: CascadePolicyConfig,
    artifact: CascadeArtifact,
    data: EvalSplit,
    aci: AdaptiveConformal,
    feedback: str = "user",
    label_share: float = 1.0,
    seed: int = 0,
) -> list[CascadeOutcome]:
    """Each request through `CascadeRun` at the thresholds `aci` serves at that moment, then
    (for a random `label_share` of them) its label fed to `aci`, as POST /v1/feedback does."""
    names, top = policy.tier_names, policy.top
    rng = np.random.default_rng(seed)
    outcomes = []
    for i in range(data.n):

        def signal_at(t: int, i: int = i):
            name = names[t]
            gen = data.answers[name][i]
            if t >= top:
                return None
            return artifact.signal(
                name, gen, threshold=aci.threshold(name), context=data.context(i)
            )

        o = run_cascade(
            policy, begin_run(policy, data, i), signal_at, lambda t, i=i: _tokens(data, names, t, i)
        )
        outcomes.append(o)
        if rng.random() >= label_share:
            continue
        final = names[o.final_tier]
        if feedback == "strong":
            wrong = not same_answer(data.answers[final][i].text, data.answers[names[top]][i].text)
        else:
            wrong = data.judgements[final][i] != Judgement.correct
        aci.feedback(tier_decisions(o, names), wrong=wrong)
    return outcomes


def _tokens(data: EvalSplit, names: list[str], t: int, i: int) -> int:
    return int(data.output_tokens[names[t]][i])


def measure(
    policy: CascadePolicyConfig, data: EvalSplit, outcomes: list[CascadeOutcome], aci
) -> dict:
    """Accuracy, cost (vs always-top), escalation rate, and per tier below the top its risk,
    escalation rate and where alpha_t ended."""
    names, top = policy.tier_names, policy.tier_names[-1]
    right = np.array([data.correct[names[o.final_tier]][i] for i, o in enumerate(outcomes)])
    cost = np.array([o.cost for o in outcomes])
    always_top = [request_cost(policy.tiers[-1], int(n)) for n in data.output_tokens[top]]
    tiers, state = {}, aci.state()["tiers"]
    for t, name in enumerate(names[:-1]):
        reached = np.array([t in o.visited for o in outcomes])
        accepted = np.array([any(c.tier == t and c.outcome == "accepted" for c in o.calls)
                             for o in outcomes])  # fmt: skip
        loss = accepted & ~data.correct[name] & data.correct[top]
        n = int(reached.sum())
        tiers[name] = {
            "reached": n,
            "alpha": state.get(name, {}).get("alpha"),
            "risk": float(loss[reached].mean()) if n else None,
            "escalation": float((reached & ~accepted)[reached].mean()) if n else None,
            "alpha_t": state.get(name, {}).get("alpha_t"),
            "threshold": aci.threshold(name),
        }
    return {
        "n": data.n,
        "accuracy": float(right.mean()),
        "cost": float(cost.mean() / max(np.mean(always_top), 1e-12)),
        "escalation_rate": float(np.mean([o.escalated for o in outcomes])),
        "tiers": tiers,
    }


def run(app: AppArgs, artifact: CascadeArtifact, args: argparse.Namespace) -> list[dict]:
    """One record per (seed, stream): the static and the adaptive replay's measures."""
    policy = app.policy()
    router = "router" if app.router.enabled else None
    below_top = {t: artifact.tiers[t] for t in app.tier_names[:-1]}
    on = AdaptiveArgs(enabled=True, gamma=args.gamma, min_feedback=args.min_feedback)
    out = []
    for seed in args.seeds:
        data = load_split("test", args.n, seed, tiers=app.tier_names, router=router)
        for stream, part in streams(data).items():
            record = {"seed": seed, "stream": stream}
            for variant, settings in (("static", AdaptiveArgs()), ("adaptive", on)):
                aci = AdaptiveConformal.build(below_top, settings)
                outcomes = replay(
                    policy, artifact, part, aci, args.feedback, args.label_share, seed
                )
                record[variant] = measure(policy, part, outcomes, aci)
            out.append(record)
    return out


def _rows(records: list[dict], tiers: list[str]) -> list[list]:
    """One table row per record and tier below the top: static next to adaptive."""

    def f(x, digits: int = 4) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    rows = []
    for r in records:
        s, a = r["static"], r["adaptive"]
        for name in tiers:
            st, at = s["tiers"][name], a["tiers"][name]
            rows.append(
                [
                    *(r["stream"], r["seed"], name, st["reached"], f"{st['alpha']:g}"),
                    *(f(st["risk"]), f(at["risk"]), f(s["cost"], 3), f(a["cost"], 3)),
                    *(f(st["escalation"], 3), f(at["escalation"], 3), f(at["alpha_t"])),
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None, help="Serve config (default serve_config.yaml).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=3000, help="Test queries per seed.")
    p.add_argument("--quick", action="store_true", help="1000 queries per seed (cached).")
    p.add_argument("--gamma", type=float, default=AdaptiveArgs().gamma)
    p.add_argument("--min-feedback", type=int, default=AdaptiveArgs().min_feedback)
    p.add_argument("--feedback", choices=["user", "strong"], default="user")
    p.add_argument("--label-share", type=float, default=1.0, help="Share of answers labelled.")
    p.add_argument("--json", action="store_true", help="Print the records as JSON instead.")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 1000
    app = AppArgs.from_serve_config(args.config)
    artifact = served_artifact(app)  # the served one, the config's overrides applied
    records = run(app, artifact, args)
    if args.json:
        print(json.dumps(json_safe({"settings": vars(args), "records": records}), indent=2))
        return
    header = ["stream", "seed", "tier", "n", "alpha", "risk static", "risk ACI"]
    header += ["cost static", "cost ACI", "esc static", "esc ACI", "alpha_t end"]
    title = (
        f"Adaptive conformal (gamma={args.gamma:g}, min_feedback={args.min_feedback}, "
        f"feedback={args.feedback}, label share {args.label_share:g}), test split, "
        f"n={args.n} per seed"
    )
    print(table(title, header, _rows(records, app.tier_names[:-1])))


if __name__ == "__main__":
    main()
