"""Figures of a report (PNG): FPR bars, FPR vs delta, ROC, max scores, reliability, FP images.

Inputs are the aggregated table rows of ``mia.report`` and the per-sample arrays that runs saved
in ``results/scores.npz`` and ``results/fp_images.npz``. A figure whose data is absent (older
runs) is skipped with its reason, never drawn empty.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display needed, safe on clusters and in tests
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mia.report import Group, Run

log = logging.getLogger(__name__)

SECTION_KEYS = ("dataset", "architecture", "setting")


@dataclass
class PlotOptions:
    """Settings of the figures (``plot`` in ``conf/evaluate.yaml``)."""

    hist_bins: int = 40
    reliability_bins: int = 15
    fp_images_per_set: int = 8
    roc_points: int = 201
    dpi: int = 120


class Arrays:
    """The npz files of runs, each read once (``allow_pickle=False``); {} when absent."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, np.ndarray]] = {}

    def __call__(self, run: Run, name: str) -> dict[str, np.ndarray]:
        path = run.path / "results" / name
        if path not in self._cache:
            self._cache[path] = {}
            if path.is_file():
                try:
                    with np.load(path, allow_pickle=False) as data:
                        self._cache[path] = {k: data[k] for k in data.files}
                except (OSError, ValueError) as err:
                    log.warning("cannot read %s: %s", path, err)
        return self._cache[path]


def slug(*parts: str) -> str:
    """A file-name-safe join of ``parts``."""
    text = "_".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def _grid(
    count: int, size: float = 3.2, cols: int = 4, extra: float = 0.0
) -> tuple[Figure, np.ndarray]:
    """``count`` panels of ``size`` inches (plus ``extra`` below each), ``cols`` to a row."""
    cols = min(cols, count)
    rows = -(-count // cols)
    # at least 6 inches wide, so that one panel still has room for the figure's title
    width = max(size * cols, 6.0)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width, (size + extra) * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat


def fpr_bars(rows: list[dict[str, Any]], title: str) -> Figure | None:
    """Grouped bars: FPR (mean, std as error bar) per non-member set, one bar per calibration."""
    sets = list(dict.fromkeys(r["nonmember_set"] for r in rows))
    columns = list(dict.fromkeys(r["calibration"] for r in rows))
    if not sets:
        return None
    cells = {(r["nonmember_set"], r["calibration"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(sets) + 2), 4), layout="constrained")
    width = 0.8 / len(columns)
    x = np.arange(len(sets))
    for i, column in enumerate(columns):
        found = [cells.get((s, column)) for s in sets]
        heights = [np.nan if r is None else r["fpr"] for r in found]
        errors = [0.0 if r is None or r["fpr_std"] is None else r["fpr_std"] for r in found]
        ax.bar(
            x + (i - (len(columns) - 1) / 2) * width,
            heights,
            width,
            yerr=errors if any(errors) else None,
            capsize=2,
            label=column,
        )
    ax.set_xticks(x, sets, rotation=30, ha="right")
    ax.set(ylabel="FPR", ylim=(0, 1.05), title=title)
    ax.legend(title="calibration", fontsize="small")
    return fig


def fpr_delta(points: list[dict[str, Any]], title: str) -> Figure | None:
    """FPR of the scaled sets against the scaling factor (log x axis), one line per calibration."""
    if len({p["delta"] for p in points}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for column in dict.fromkeys(p["calibration"] for p in points):
        line = sorted((p for p in points if p["calibration"] == column), key=lambda p: p["delta"])
        errors = [p["fpr_std"] or 0.0 for p in line]
        ax.errorbar(
            [p["delta"] for p in line],
            [p["fpr"] for p in line],
            yerr=errors,
            marker="o",
            capsize=2,
            label=column,
        )
    ax.set_xscale("log")
    ax.set(xlabel="scaling factor delta", ylabel="FPR", ylim=(0, 1.05), title=title)
    ax.legend(title="calibration", fontsize="small")
    return fig


def roc_curve(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROC (members positive, member iff score >= threshold): ``(fpr, tpr)`` from (0, 0)."""
    scores = np.concatenate([members, nonmembers]).astype(np.float64)
    is_member = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    order = np.argsort(-scores, kind="mergesort")
    # one point per distinct score, so tied scores move along the diagonal together
    last = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]
    tps = np.cumsum(is_member[order])[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / max(len(nonmembers), 1)], np.r_[0.0, tps / max(len(members), 1)]


def _mean_roc(pairs: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> tuple:
    """Vertical average of runs' ROC curves on ``grid`` and their mean AUROC."""
    curves = [roc_curve(m, n) for m, n in pairs]
    tpr = np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves], axis=0)
    return tpr, float(np.mean([np.trapezoid(tpr, fpr) for fpr, tpr in curves]))


def roc_figure(
    panels: dict[str, list[dict[str, np.ndarray]]], attack: str, title: str, points: int
) -> Figure | None:
    """ROC curves of ``attack``, members vs each non-member set; one panel per calibration."""
    prefix = f"{attack}__"
    panels = {k: [a for a in v if f"{prefix}members" in a] for k, v in panels.items()}
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return None
    labels = [k[len(prefix) :] for a in _all(panels.values()) for k in a if k.startswith(prefix)]
    labels = [label for label in dict.fromkeys(labels) if label != "members"]
    # legend below each panel: room for it, and one color per set in every panel
    fig, axes = _grid(len(panels), size=4.0, cols=3, extra=0.1 * len(labels) + 0.4)
    colors = plt.get_cmap("tab20")(np.arange(len(labels)) % 20)
    grid = np.linspace(0, 1, points)
    for ax, (column, arrays) in zip(axes, panels.items(), strict=False):
        for label, color in zip(labels, colors, strict=True):
            key = f"{prefix}{label}"
            pairs = [(a[f"{prefix}members"], a[key]) for a in arrays if key in a]
            if pairs:
                tpr, auc = _mean_roc(pairs, grid)
                ax.plot(grid, tpr, color=color, label=f"{label} ({auc:.2f})")
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set(xlabel="FPR", ylabel="TPR", title=f"{column} ({len(arrays)} run(s))")
        ax.legend(
            title="non-members (AUROC)",
            fontsize="x-small",
            ncol=2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.18),
        )
    fig.suptitle(title, fontsize="medium")
    return fig


def score_histograms(arrays: list[dict[str, np.ndarray]], title: str, bins: int) -> Figure | None:
    """Max prediction scores of the members vs each non-member set, pooled over the runs."""
    arrays = [a for a in arrays if "max_score__members" in a]
    labels = [k for k in dict.fromkeys(k for a in arrays for k in a) if k.startswith("max_score__")]
    labels = [k for k in labels if k != "max_score__members"]
    if not labels:
        return None
    members = np.concatenate([a["max_score__members"] for a in arrays])
    fig, axes = _grid(len(labels))
    edges = np.linspace(0, 1, bins + 1)
    for ax, key in zip(axes, labels, strict=False):
        others = np.concatenate([a[key] for a in arrays if key in a])
        for values, name in ((members, "members"), (others, "non-members")):
            ax.hist(
                values,
                edges,
                weights=np.full(len(values), 1 / max(len(values), 1)),
                alpha=0.6,
                label=name,
            )
        ax.set(title=key.removeprefix("max_score__"), xlabel="max score", ylabel="fraction")
        ax.legend(fontsize="x-small")
    fig.suptitle(f"{title} ({len(arrays)} run(s) pooled)", fontsize="medium")
    return fig


def reliability(arrays: list[dict[str, np.ndarray]], title: str, bins: int) -> Figure | None:
    """Reliability diagram per model (role x scores) from its test samples, pooled over runs."""
    keys = [k for k in dict.fromkeys(k for a in arrays for k in a) if k.startswith("reliability__")]
    models = [k.removesuffix("__confidence") for k in keys if k.endswith("__confidence")]
    models = [m for m in models if f"{m}__correct" in keys]
    if not models:
        return None
    fig, axes = _grid(len(models))
    edges = np.linspace(0, 1, bins + 1)
    for ax, model in zip(axes, models, strict=False):
        found = [a for a in arrays if f"{model}__confidence" in a and f"{model}__correct" in a]
        conf = np.concatenate([a[f"{model}__confidence"] for a in found]).astype(np.float64)
        correct = np.concatenate([a[f"{model}__correct"] for a in found]).astype(np.float64)
        index = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
        counts = np.bincount(index, minlength=bins)
        acc = np.bincount(index, correct, bins) / np.maximum(counts, 1)
        mean_conf = np.bincount(index, conf, bins) / np.maximum(counts, 1)
        ece = float(np.sum(counts * np.abs(acc - mean_conf)) / max(len(conf), 1))
        ax.bar(
            edges[:-1],
            np.where(counts > 0, acc, 0),
            1 / bins,
            align="edge",
            alpha=0.7,
            edgecolor="k",
            linewidth=0.5,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "r--", linewidth=1, label="perfect calibration")
        _, role, method = model.split("__", 2)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(f"{role}, {method} (ECE {ece:.3f})")
        ax.legend(fontsize="x-small", loc="upper left")
    fig.suptitle(f"{title} ({len(arrays)} run(s) pooled)", fontsize="medium")
    return fig


def _show_image(ax: Any, image: np.ndarray) -> None:
    image = np.clip(image, 0, 1)
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.transpose(image[:3], (1, 2, 0)))


def fp_images(arrays: dict[str, np.ndarray], title: str, per_set: int) -> Figure | None:
    """The most confident false-positive non-members per set, with their max scores."""
    labels = [k for k in arrays if not k.endswith("__score") and arrays[k].ndim == 4]
    if not labels:
        return None
    cols = max(1, min(per_set, max(len(arrays[k]) for k in labels)))
    fig, axes = plt.subplots(
        len(labels),
        cols,
        figsize=(max(1.4 * cols + 1, 6.0), 1.6 * len(labels) + 0.4),
        squeeze=False,
    )
    for row, label in zip(axes, labels, strict=True):
        images, scores = arrays[label], arrays.get(f"{label}__score", np.array([]))
        for i, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if i < len(images):
                _show_image(ax, images[i])
                ax.set_title(f"{scores[i]:.3f}" if i < len(scores) else "", fontsize="x-small")
            else:
                ax.set_frame_on(False)
        row[0].set_ylabel(label, rotation=0, ha="right", fontsize="small")
        if not len(images):
            row[0].text(
                0.05, 0.5, "no false positives", ha="left", va="center", transform=row[0].transAxes
            )
    fig.suptitle(title, fontsize="medium")
    return fig


def _all(nested: Iterable[list[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    return [item for items in nested for item in items]


def _section(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(row[k] for k in SECTION_KEYS)


def _title(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG through a temporary file and a rename, then close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


class _Writer:
    """Saves figures to ``out`` and records the ones whose data was missing."""

    def __init__(self, out: Path, dpi: int) -> None:
        self.out, self.dpi = out, dpi
        self.written: list[Path] = []
        self.skipped: dict[str, str] = {}

    def save(self, fig: Figure | None, name: str, reason: str) -> None:
        if fig is None:
            self.skipped[name] = reason
            log.info("figure %s skipped: %s", name, reason)
            return
        self.written.append(save_figure(fig, self.out / name, self.dpi))


def _section_figures(w: _Writer, section, groups, rows, points, arrays, opt) -> None:
    stem = slug(*section)
    for attack in dict.fromkeys(r["attack"] for r in rows):
        title = _title(f"{attack} attack", *section)
        picked = [r for r in rows if r["attack"] == attack]
        w.save(fpr_bars(picked, title), f"fpr_{slug(attack, stem)}.png", "no attack rows")
        line = [p for p in points if p["attack"] == attack]
        w.save(fpr_delta(line, title), f"fpr_vs_delta_{slug(attack, stem)}.png", "< 2 deltas")
        panels = {g.calibration: [arrays(r, "scores.npz") for r in g.runs] for g in groups}
        reason = "no results/scores.npz with per-sample scores"
        w.save(
            roc_figure(panels, attack, title, opt.roc_points),
            f"roc_{slug(attack, stem)}.png",
            reason,
        )


def _group_figures(w: _Writer, group: Group, arrays: Arrays, opt: PlotOptions) -> None:
    stem, title = slug(*group.section, group.calibration), _title(*group.section, group.calibration)
    scores = [arrays(r, "scores.npz") for r in group.runs]
    w.save(
        score_histograms(scores, title, opt.hist_bins),
        f"max_scores_{stem}.png",
        "no max scores in results/scores.npz",
    )
    w.save(
        reliability(scores, title, opt.reliability_bins),
        f"reliability_{stem}.png",
        "no reliability arrays in results/scores.npz",
    )
    first = next((r for r in group.runs if arrays(r, "fp_images.npz")), None)
    fig = None
    if first is not None:
        seed_title = f"{title}: most confident false positives (seed {first.config.get('seed')})"
        fig = fp_images(arrays(first, "fp_images.npz"), seed_title, opt.fp_images_per_set)
    w.save(fig, f"fp_images_{stem}.png", "no results/fp_images.npz")


def write_figures(
    out: Path,
    groups: Iterable[Group],
    rows: list[dict[str, Any]],
    points: list[dict[str, Any]],
    opt: PlotOptions,
) -> tuple[list[Path], dict]:
    """Draw every figure into ``out``; returns the files written and ``{skipped name: reason}``."""
    groups = list(groups)
    writer, arrays = _Writer(out, opt.dpi), Arrays()
    for section in dict.fromkeys(g.section for g in groups):
        members = [g for g in groups if g.section == section]
        picked = [r for r in rows if _section(r) == section]
        line = [p for p in points if _section(p) == section]
        _section_figures(writer, section, members, picked, line, arrays, opt)
    for group in groups:
        _group_figures(writer, group, arrays, opt)
    return writer.written, writer.skipped
