"""The confidence-head report and ablation: every method on a held-out split, as the design's
table, with reliability diagrams; and SFT vs SFT + RL, reward and loss-weight ablations.

Data flow (all labels cached once under `<out>/labels/`, trained heads under `<out>/heads/`):
the head trains on the calibration split (seed `label_seed`), early-stops and fits temperature
scaling on the validation split, and is evaluated on `split` (test) at `seed`; a seed other than
the one tuned on gives a fresh sample.

    python -m calibration report --split test --seed 0 --json
    python -m calibration ablate --split test --seeds 0 1 2 3 4
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from models.router_model import ConfidenceHead
from offline.head.baselines import METHODS, LoadedHead, fit_methods
from offline.head.fitting import fit_rl, fit_sft
from offline.head.labels import LabelModels, LabelSet, label_split
from offline.head.metrics import (
    PAIRED_METRICS,
    bootstrap_interval,
    brier,
    ece,
    overlay_diagram,
    paired_versus,
    reliability_diagram,
    summarize,
)
from offline.head.training import RLConfig, SFTConfig

__all__ = [
    "DESIGN_ECE",
    "HeadData",
    "ablate",
    "ablation_markdown",
    "report",
    "report_markdown",
]

# ECE in the design's table, for comparison (it gives no figure for max probability; its one
# "SFT + RL" figure is shown beside each reward's row).
DESIGN_ECE = {
    "entropy": 0.15,
    "temperature_scaling": 0.08,
    "sft": 0.10,
    **{f"sft_rl_{r}": 0.04 for r in ("linear", "brier", "log")},
}
TARGET_ECE, TARGET_BRIER = 0.03, 0.15
BASELINE = "max_probability"  # the router's own confidence: what a head has to beat


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class HeadData:
    """Where the labels come from: sizes and seeds of the training and validation samples."""

    n_train: int = 4000  # calibration-split queries the head trains on
    n_val: int = 2000  # validation-split queries (early stopping, temperature scaling)
    label_seed: int = 0

    def load(
        self, zoo_root: Path, out: Path, progress: bool | None = None, matrix=None
    ) -> tuple[LabelSet, LabelSet]:
        """(train, val) label sets, from the cache under `out/labels` when current."""
        kw = {"seed": self.label_seed, "out_dir": out / "labels", "progress": progress}
        kw["matrix"] = matrix
        train = label_split(zoo_root, "calibration", self.n_train, **kw)
        val = label_split(zoo_root, "validation", self.n_val, **kw)
        return train, val


def report(
    zoo_root: Path,
    split: str = "test",
    seed: int = 0,
    n: int = 4000,
    data: HeadData = HeadData(),
    out: Path = Path("artifacts"),
    methods: list[str] | None = None,
    sft: SFTConfig = SFTConfig(),
    rl: RLConfig = RLConfig(),
    num_workers: int = 1,
    progress: bool | None = None,
    matrix=None,
) -> dict:
    """Fit every method (heads reused from `<out>/heads` when unchanged), score them on
    `sample(split, n, seed)`, write the diagrams and the markdown table; returns the report.

    With all methods, the head saved beside the zoo's router (if any) is scored too, as
    `served_head`: what the router deployment actually serves.
    """
    out = Path(out)
    train, val = data.load(zoo_root, out, progress, matrix)
    test = _test_labels(zoo_root, split, n, seed, out, matrix, progress)
    names = methods or list(METHODS)
    fitted = fit_methods(
        names, train, val, sft=sft, rl=rl, cache_dir=out / "heads", num_workers=num_workers
    )
    served = LabelModels.of(zoo_root).router
    if methods is None and ConfidenceHead.exists(served):
        fitted["served_head"] = LoadedHead(served)  # what the router deployment serves
    y, conf = test.correct.numpy(), {name: m.confidence(test) for name, m in fitted.items()}
    rows, paired = _score_methods(conf, y, groups=[r.query for r in test.records])
    best = min(rows, key=lambda k: (rows[k]["ece"], rows[k]["brier"]))  # lowest ECE-15
    met_by = [k for k, m in rows.items() if m["ece"] <= TARGET_ECE and m["brier"] <= TARGET_BRIER]
    folder = out / "report" / f"{split}-seed{seed}-n{n}"
    result = {
        "split": split,
        "seed": seed,
        "n": test.n,
        "router_accuracy": test.router_accuracy,
        "in_sample": split in ("calibration", "validation") and seed == data.label_seed,
        "trained_on": {"calibration": train.n, "validation": val.n, **asdict(data)},
        "methods": rows,
        "fitted": {name: m.info() for name, m in fitted.items()},
        "best": best,
        "best_brier": min(rows, key=lambda k: rows[k]["brier"]),
        "targets": {
            "ece": TARGET_ECE,
            "brier": TARGET_BRIER,
            "met_by": met_by,
            "met": bool(met_by),
        },
        "paired_vs_max_prob": paired,
        "diagrams": _diagrams(conf, y, folder, title=f"{split} seed {seed}"),
    }
    table = folder / "table.md"
    table.write_text(report_markdown(result))
    (folder / "report.json").write_text(json.dumps(result, indent=2))
    result["table"] = str(table)
    return result


def _test_labels(
    zoo_root: Path, split: str, n: int, seed: int, out: Path, matrix, progress: bool | None
) -> LabelSet:
    """The evaluated sample `sample(split, n, seed)`, labelled (cached under `out/labels`)."""
    return label_split(
        zoo_root, split, n, seed, out_dir=out / "labels", matrix=matrix, progress=progress
    )


def _score_methods(
    conf: dict[str, np.ndarray], y: np.ndarray, groups: list[str]
) -> tuple[dict, dict]:
    """Each method's metrics, plus 90% bootstrap intervals of ECE and Brier; and each
    method's paired difference to max probability (`paired_versus`). `groups` (the queries)
    make repeated queries resample together, in both."""
    rows = {}
    for name, c in conf.items():
        rows[name] = summarize(c, y)
        rows[name]["ece_ci90"] = bootstrap_interval(c, y, ece, groups=groups)
        rows[name]["brier_ci90"] = bootstrap_interval(c, y, brier, groups=groups)
    return rows, paired_versus(conf, BASELINE, y, groups)


def _diagrams(conf: dict[str, np.ndarray], y: np.ndarray, folder: Path, title: str) -> dict:
    """One reliability diagram per method and the overlay of all of them, under `folder`."""
    diagrams = {
        name: str(reliability_diagram(c, y, folder / f"reliability_{name}.png", title=name))
        for name, c in conf.items()
    }
    overlay = overlay_diagram(
        {k: (c, y) for k, c in conf.items()},
        folder / "reliability_overlay.png",
        title=f"{title}: reliability of every method",
    )
    return {**diagrams, "overlay": str(overlay)}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(interval) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def report_markdown(result: dict) -> str:
    """The design's table: one row per method, the design's ECE figure beside ours."""
    lines = [
        f"Split `{result['split']}`, seed {result['seed']}, n = {result['n']}; router accuracy "
        f"{result['router_accuracy']:.3f}. Lowest ECE-15: **{result['best']}**; lowest Brier: "
        f"{result['best_brier']}; ECE-15 <= {TARGET_ECE} and Brier <= {TARGET_BRIER} met by: "
        f"{', '.join(result['targets']['met_by']) or 'none'}.",
        "",
        "| method | ECE-15 [90% CI] | ECE-10 | ECE eq-mass | Brier [90% CI] | AUROC | acc@0.5 "
        "| mean conf | n | design ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["methods"].items():
        label = f"**{name}**" if name == result["best"] else name
        lines.append(
            f"| {label} | {_fmt(m['ece'])} {_ci(m['ece_ci90'])} | {_fmt(m['ece_10'])} "
            f"| {_fmt(m['ece_equal_mass'])} | {_fmt(m['brier'])} {_ci(m['brier_ci90'])} "
            f"| {_fmt(m['auroc'])} | {_fmt(m['decision_accuracy'])} "
            f"| {_fmt(m['mean_confidence'])} | {m['n']} | {_fmt(DESIGN_ECE.get(name), 2)} |"
        )
    lines += [
        "",
        "Intervals: 90% bootstrap over the evaluated queries, a repeated query resampled as one "
        "(small families repeat, so rows are not independent). ECE's interval sits above its "
        "estimate because resampling adds to the plug-in ECE's upward bias: read it as spread. "
        "acc@0.5: how often "
        "`confidence >= 0.5` agrees with whether the router was right.",
    ]
    lines += _paired_markdown(result.get("paired_vs_max_prob", {}))
    return "\n".join(lines) + "\n"


def _paired_markdown(paired: dict) -> list[str]:
    """The paired-difference table: each method minus max probability, with verdicts."""
    if not paired:
        return []
    lines = [
        "",
        f"Method minus `{BASELINE}`, 90% paired bootstrap interval of the difference (same "
        "resampled queries for both; ECE and Brier: lower is better, AUROC: higher is better):",
        "",
        "| method | ΔECE-15 [90% CI] | ΔBrier [90% CI] | ΔAUROC [90% CI] |",
        "|---|---|---|---|",
    ]
    for name, row in paired.items():
        cells = [
            f"{_fmt(row[f'{k}_difference'])} {_ci(row[k])} {row[f'{k}_verdict']}"
            for k in PAIRED_METRICS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# --- ablation ----------------------------------------------------------------------------------

CAL_WEIGHTS = (0.0, 0.1, 0.3, 1.0)
ABLATION_METRICS = ("ece", "ece_equal_mass", "brier", "auroc")


def ablation_variants(rl: RLConfig) -> list[tuple[str, str, RLConfig | None]]:
    """(group, variant, RL config or None for SFT only), in table order."""
    rows: list[tuple[str, str, RLConfig | None]] = [("stage", "sft only", None)]
    rows += [("reward", f"sft + rl {r}", replace(rl, reward=r)) for r in ("linear", "brier", "log")]
    for r in ("brier", "linear"):
        rows += [
            (
                "calibration weight",
                f"sft + rl {r}, cal {w}",
                replace(rl, reward=r, calibration_weight=w),
            )
            for w in CAL_WEIGHTS
        ]
    rows.append(("ranking weight", "sft + rl brier, rank 0", replace(rl, ranking_weight=0.0)))
    for r in ("linear", "brier"):
        rows.append(
            ("rl budget", f"sft + rl {r}, 3x steps", replace(rl, reward=r, steps=3 * rl.steps))
        )
    return rows


def ablate(
    zoo_root: Path,
    split: str = "test",
    seed: int = 0,
    n: int = 4000,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    data: HeadData = HeadData(),
    out: Path = Path("artifacts"),
    sft: SFTConfig = SFTConfig(),
    rl: RLConfig = RLConfig(),
    progress: bool | None = None,
    matrix=None,
) -> dict:
    """Every variant trained once per training seed (head init, dropout, RL sampling) on the
    same cached labels, scored on `sample(split, n, seed)`: mean and spread over seeds."""
    if not seeds:
        raise ValueError("ablate needs at least one training seed")
    out = Path(out)
    train, val = data.load(zoo_root, out, progress, matrix)
    test = _test_labels(zoo_root, split, n, seed, out, matrix, progress)
    variants = ablation_variants(rl)
    scores: dict[str, list[dict]] = {name: [] for _, name, _ in variants}
    for s in seeds:
        log(f"ablation: training seed {s}")
        for name, summary in _score_variants(variants, s, train, val, test, sft).items():
            scores[name].append(summary)
    result = {
        "split": split,
        "seed": seed,
        "n": test.n,
        "training_seeds": list(seeds),
        "rows": _ablation_rows(variants, scores),
    }
    folder = out / "ablation" / f"{split}-seed{seed}-n{n}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ablation.json").write_text(json.dumps(result, indent=2))
    table = folder / "ablation.md"
    table.write_text(ablation_markdown(result))
    result["table"] = str(table)
    return result


def _score_variants(
    variants: list[tuple[str, str, RLConfig | None]],
    seed: int,
    train: LabelSet,
    val: LabelSet,
    test: LabelSet,
    sft: SFTConfig,
) -> dict[str, dict]:
    """One training seed: SFT once, then every variant's RL from that checkpoint, each scored
    on `test`; variant name -> metrics."""
    sft_head, _ = fit_sft(train, val, replace(sft, seed=seed))
    done: dict[str, dict] = {}  # the same config twice (e.g. the default cal weight) runs once
    scores = {}
    for _, name, cfg in variants:
        key = json.dumps(cfg and asdict(cfg))
        if key not in done:
            head = sft_head
            if cfg is not None:
                head, _ = fit_rl(sft_head, train, val, replace(cfg, seed=seed))
            conf = head.confidence(test.hidden.float()).numpy()
            done[key] = summarize(conf, test.correct.numpy())
        scores[name] = done[key]
    return scores


def _ablation_rows(
    variants: list[tuple[str, str, RLConfig | None]], scores: dict[str, list[dict]]
) -> list[dict]:
    """One row per variant: mean, std (ddof 1) and the per-seed values of each metric."""
    rows = []
    for group, name, cfg in variants:
        row = {"group": group, "variant": name, "config": cfg and asdict(cfg)}
        for metric in ABLATION_METRICS:
            values = [r[metric] for r in scores[name] if r[metric] is not None]
            row[metric] = {
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": values,
            }
        rows.append(row)
    return rows


def ablation_markdown(result: dict) -> str:
    k = len(result["training_seeds"])
    lines = [
        f"Split `{result['split']}`, seed {result['seed']}, n = {result['n']}; mean ± std over "
        f"{k} training seeds {result['training_seeds']}.",
        "",
        "| group | variant | ECE-15 | ECE eq-mass | Brier | AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        cells = [f"{_fmt(row[m]['mean'], 4)} ± {_fmt(row[m]['std'], 4)}" for m in ABLATION_METRICS]
        lines.append(f"| {row['group']} | {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
