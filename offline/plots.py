"""The cost-quality picture of an evaluation: one PNG, two panels.

Left: accuracy against mean cost per request (what a budget owner reads). Right: PGR against
the share of requests calling the strong tier (RouteLLM's axes, where APGR is the area).
Swept families are lines, single strategies are markers. matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["cost_quality_plot"]

_LINES = ("quality_estimator", "router+cascade", "router_only", "random")
_MARKERS = {
    "always_cheap": "s",
    "always_strong": "s",
    "heuristic": "X",
    "seed_rules": "P",
    "oracle": "*",
    "conformal:budget": "o",
    "conformal:recall": "^",
    "conformal:risk": "D",
    "heuristic+router": "x",
    "conformal:budget+router": "h",
    "conformal:recall+router": "v",
    "conformal:risk+router": "d",
}


def cost_quality_plot(report: dict, path: str | Path, features: bool = True) -> Path:
    """Draw `offline.evaluate.evaluate`'s report to `path` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["summary"]
    weak, strong = s["weak_accuracy"], s["strong_accuracy"]
    gap = (strong - weak) or 1.0
    fams: dict[str, list[dict]] = {}
    for p in report["strategies"]:
        fams.setdefault(p["family"], []).append(p)
    fig, (ax_c, ax_s) = plt.subplots(1, 2, figsize=(14, 6))
    for fam, pts in fams.items():
        is_feature = fam.startswith("feature:")
        if fam in _LINES or (features and is_feature):
            pts = sorted(pts, key=lambda p: p["cost"])
            style = dict(lw=0.8, alpha=0.5) if is_feature else dict(lw=1.8)
            label = fam if not is_feature else fam.removeprefix("feature:")
            ax_c.plot([p["cost"] for p in pts], [p["accuracy"] for p in pts], label=label, **style)
            pts = sorted(pts, key=lambda p: p["strong_share"])
            ax_s.plot(
                [100 * p["strong_share"] for p in pts],
                [(p["accuracy"] - weak) / gap for p in pts],
                label=label,
                **style,
            )
        elif fam in _MARKERS:
            size = 25 if fam.endswith("+router") else 70  # clouds over alpha x threshold
            kw = dict(marker=_MARKERS[fam], s=size, label=fam, zorder=5)
            ax_c.scatter([p["cost"] for p in pts], [p["accuracy"] for p in pts], **kw)
            ax_s.scatter(
                [100 * p["strong_share"] for p in pts],
                [(p["accuracy"] - weak) / gap for p in pts],
                **kw,
            )
    ax_c.axvline(0.5 * s["always_strong_cost"], color="grey", ls=":", lw=1)
    ax_c.set(
        xlabel="mean cost per request (always-strong = 1)",
        ylabel="accuracy",
        title="cost vs quality",
    )
    ax_s.axhline(0.9, color="grey", ls=":", lw=1)
    ax_s.set(
        xlabel="requests calling the strong tier (%)",
        ylabel="PGR (share of the cheap-to-strong gap recovered)",
        title=f"best family {s['best_family']}: APGR {s['apgr']:.3f}; oracle "
        f"{s['oracle']['apgr']:.3f}",
    )
    ax_c.legend(fontsize=7, ncol=2)
    for ax in (ax_c, ax_s):
        ax.grid(alpha=0.3)
    fig.suptitle(f"split {report['split']} (n={report['n']}, seed {report['seed']})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
