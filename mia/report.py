"""Reports over finished runs: tables (CSV, Markdown) and figures, read from results files only.

``python evaluate.py runs=<run or sweep dir>`` finds every run under the given folders, reads
what ``train.py`` wrote to ``<run>/results/`` (never a model), groups the runs that share every
factor but the seed, and writes mean, sample std and count of each group to ``report/``. Failed
runs (no ``results/summary.json``) and sweep jobs that left no folder are listed with their
reason in ``runs.csv``, the returned dict and the log; they never enter an average.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mia import plots
from mia.results import ATTACK_COLUMNS, MODEL_COLUMNS, read_csv, set_label, write_csv
from mia.results import write_text_atomic as write_text

log = logging.getLogger(__name__)

RUN_HINT = (
    "a run dir must contain config.yaml or .hydra/config.yaml (train.py writes both) and, "
    "once finished, results/summary.json; a sweep dir contains such run dirs"
)
# the numeric columns of attacks.csv, from precision to tn_mmps
ATTACK_METRICS = ATTACK_COLUMNS[
    ATTACK_COLUMNS.index("precision") : ATTACK_COLUMNS.index("tn_mmps") + 1
]
MODEL_METRICS = MODEL_COLUMNS[
    MODEL_COLUMNS.index("train_acc") : MODEL_COLUMNS.index("mean_max_score") + 1
]
LABELS = ("dataset", "architecture", "setting", "calibration")
CALIBRATION_ORDER = ("none", "temp", "ls", "l2")
METRIC_NAMES = {"fpr": "FPR", "recall": "TPR (recall)", "auroc": "AUROC", "precision": "Precision"}
HEAD = (*LABELS, "n", "seeds")
ATTACK_TABLE_COLUMNS = (*HEAD[:4], "attack", "nonmember_set", "set", "delta", *HEAD[4:])
ATTACK_TABLE_COLUMNS += tuple(c for m in ATTACK_METRICS for c in (m, f"{m}_std"))
MODEL_TABLE_COLUMNS = (*HEAD[:4], "role", "method", "calibrated", *HEAD[4:])
MODEL_TABLE_COLUMNS += tuple(c for m in MODEL_METRICS for c in (m, f"{m}_std"))
RUN_COLUMNS = (
    "path",
    "status",
    "reason",
    "dataset",
    "architecture",
    "calibration",
    "seed",
    "overrides",
    "skipped_sets",
)


@dataclass
class Run:
    """One run dir (or a sweep job that left none) and what its results files hold."""

    path: Path
    status: str  # "complete", "failed" or "missing"
    reason: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # flattened: {"calibration.name": ...}
    overrides: list[str] = field(default_factory=list)
    attacks: list[dict[str, str]] = field(default_factory=list)
    models: list[dict[str, str]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> Any:
        """The run's seed; a run without one counts as its own seed."""
        return self.config.get("seed", str(self.path))

    def factors(self) -> dict[str, str]:
        """Data set, architecture (last part of its ``_target_``) and calibration method."""
        target = str(self.config.get("architecture._target_", ""))
        return {
            "dataset": str(self.config.get("dataset.source.name", "")),
            "architecture": target.rsplit(".", 1)[-1],
            "calibration": str(self.config.get("calibration.name", "")),
        }


@dataclass
class Group:
    """Complete runs that share every factor but the seed: one column of a table."""

    section: tuple[str, str, str]  # dataset, architecture, setting (other varying factors)
    calibration: str  # the calibration method, with any varying calibration options
    runs: list[Run]

    @property
    def n(self) -> int:
        return len({_show(r.seed) for r in self.runs})

    def labels(self) -> dict[str, str]:
        return dict(zip(LABELS, (*self.section, self.calibration), strict=True))


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become JSON text so they compare as values."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat |= flatten(value, f"{prefix}{key}.")
        return flat
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}


def _read_config(path: Path) -> dict[str, Any]:
    # config.yaml is resolved by train.py; .hydra/config.yaml (jobs that died before writing it)
    # keeps interpolations such as ${hydra:...} that only resolve inside that job.
    for name in ("config.yaml", ".hydra/config.yaml"):
        if (path / name).is_file():
            try:
                return flatten(OmegaConf.to_container(OmegaConf.load(path / name)))
            except Exception as err:  # a truncated or hand-edited file must not stop the report
                log.warning("cannot read %s: %s", path / name, err)
                return {}
    return {}


def _failure_reason(results: Path) -> str:
    error = results / "error.txt"
    if error.is_file():
        lines = error.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[0]
    return "no results/summary.json (the run failed, was killed or is still running)"


def load_run(path: Path) -> Run:
    """Read one run dir; a run without ``results/summary.json`` is failed."""
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    run = Run(path, "complete", config=_read_config(path), overrides=[str(o) for o in overrides])
    results = path / "results"
    if not (results / "summary.json").is_file():
        run.status, run.reason = "failed", _failure_reason(results)
        return run
    try:
        run.summary = json.loads((results / "summary.json").read_text())
        run.attacks = read_csv(results / "attacks.csv")
        run.models = read_csv(results / "models.csv") if (results / "models.csv").is_file() else []
    except (OSError, ValueError, csv.Error) as err:
        run.status, run.reason = "failed", f"unreadable results: {err}"
    return run


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / ".hydra" / "config.yaml").is_file()


def _natural(path: Path) -> tuple[bool, int | str]:
    # sweep jobs 0, 1, ..., 10 in numeric order
    return (not path.name.isdigit(), int(path.name) if path.name.isdigit() else path.name)


def _missing_jobs(sweep: Path, found: list[Run]) -> list[Run]:
    """Jobs that the sweep's ``multirun.yaml`` asked for and that left no run dir."""
    try:
        # Hydra's own expansion of sweep overrides (a=1,2 b=range(3) ...) into jobs
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hydra_cfg = OmegaConf.load(sweep / "multirun.yaml").hydra
        if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return []  # other sweepers choose their jobs at run time
        parsed = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
        expected = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception as err:
        log.warning("cannot list the jobs of sweep %s (%s); missing jobs not detected", sweep, err)
        return []
    present = {tuple(sorted(r.overrides)) for r in found}
    return [
        Run(
            sweep / str(num),
            "missing",
            f"sweep job {num} ({' '.join(job)}) left no run dir",
            overrides=list(job),
        )
        for num, job in enumerate(expected)
        if tuple(sorted(job)) not in present
    ]


def _find_runs(root: Path) -> list[Run]:
    if _is_run(root):
        return [load_run(root)]  # a run's own subfolders (wandb/, report/) hold no runs
    runs: list[Run] = []
    children = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    for child in sorted(children, key=_natural):
        if not child.name.startswith("."):
            runs += _find_runs(child)
    if (root / "multirun.yaml").is_file():
        runs += _missing_jobs(root, runs)
    return runs


def discover(paths: list[str]) -> list[Run]:
    """Every run under ``paths`` (run dirs, sweep dirs or folders of them), each listed once."""
    if not paths:
        raise ValueError(f"runs is empty: give runs=<dir> or runs=[<dir>,<dir>]; {RUN_HINT}")
    runs: dict[Path, Run] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise ValueError(f"runs: {raw} does not exist or is not a folder; {RUN_HINT}")
        found = _find_runs(path)
        if not any(r.status != "missing" for r in found):
            raise ValueError(f"runs: {raw} contains no run; {RUN_HINT}")
        for run in found:
            runs.setdefault(run.path.resolve(), run)
    return list(runs.values())


def _ignored(key: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(key, f"{p}.*") for p in patterns)


def _label(keys: list[str], factors: dict[str, Any], strip: str = "") -> str:
    return ", ".join(f"{k.removeprefix(strip)}={_show(factors[k])}" for k in keys if k in factors)


def group_runs(runs: list[Run], ignore: list[str]) -> list[Group]:
    """Group the complete runs by every config value that is not in ``ignore`` (seeds, paths).

    Factors that vary among runs of the same data set, architecture and calibration method
    (``train.epochs``, ``calibration.temperature``, ...) go into the labels, so two groups
    never share a label and nothing is averaged across different factors.
    """
    complete = [r for r in runs if r.status == "complete"]
    factors = [{k: v for k, v in r.config.items() if not _ignored(k, ignore)} for r in complete]
    mains = [tuple(r.factors().values()) for r in complete]
    keys = {k for f in factors for k in f}
    by_main: dict[tuple[str, ...], dict[str, set[str]]] = {}
    for main, fac in zip(mains, factors, strict=True):
        for key in keys:
            by_main.setdefault(main, {}).setdefault(key, set()).add(_show(fac.get(key)))
    extra = sorted({k for values in by_main.values() for k, v in values.items() if len(v) > 1})
    calib_keys = [k for k in extra if k.startswith("calibration.")]
    other_keys = [k for k in extra if not k.startswith("calibration.")]
    groups: dict[tuple[str, ...], Group] = {}
    for run, main, fac in zip(complete, mains, factors, strict=True):
        options = _label(calib_keys, fac, "calibration.")
        column = f"{main[2]} ({options})" if options else main[2]
        section = (main[0], main[1], _label(other_keys, fac))
        groups.setdefault((*section, column), Group(section, column, [])).runs.append(run)
    for group in groups.values():
        group.runs.sort(key=_seed_order)
        if group.n < len(group.runs):
            # e.g. one seed run twice with different scaling.deltas: each seed counts once
            log.warning("group %s has runs with the same seed; they count once", group.labels())
    return sorted(groups.values(), key=lambda g: (g.section, _calibration_rank(g.calibration)))


def _seed_order(run: Run) -> tuple[bool, float, str]:
    # numeric seeds in numeric order (2 before 10), then any others by name
    numeric = isinstance(run.seed, int | float) and not isinstance(run.seed, bool)
    return (not numeric, float(run.seed) if numeric else 0.0, _show(run.seed))


def _calibration_rank(label: str) -> tuple[int, str]:
    name = label.split(" ", 1)[0]
    return (CALIBRATION_ORDER.index(name) if name in CALIBRATION_ORDER else 99, label)


def _number(text: Any) -> float:
    return float("nan") if text in (None, "") else float(text)


def _aggregate(entries: list[tuple[Any, dict[str, str]]], metrics: tuple[str, ...]) -> dict:
    """Mean and sample std over seeds (runs of one seed are averaged first) and the count."""
    seeds: dict[str, list[dict[str, str]]] = {}
    for seed, row in entries:
        seeds.setdefault(_show(seed), []).append(row)
    out: dict[str, Any] = {"n": len(seeds), "seeds": ";".join(seeds)}
    for metric in metrics:
        values = [np.mean([_number(r.get(metric)) for r in rows]) for rows in seeds.values()]
        out[metric] = float(np.mean(values))
        out[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return out


def _order(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    return {v: i for i, v in enumerate(dict.fromkeys(r[key] for r in rows))}


def attack_table(groups: list[Group]) -> list[dict[str, Any]]:
    """One row per group x attack x non-member set (scaled sets as ``scaled_<delta>``)."""
    rows = []
    for group in groups:
        cells: dict[tuple[str, str, str, str], list[tuple[Any, dict[str, str]]]] = {}
        for run in group.runs:
            for row in run.attacks:
                key = (row["attack"], set_label(row), row["nonmember_set"], row.get("delta", ""))
                cells.setdefault(key, []).append((run.seed, row))
        for (attack, label, name, delta), entries in cells.items():
            head = {"attack": attack, "nonmember_set": label, "set": name}
            head["delta"] = None if delta in (None, "") else float(delta)
            rows.append(group.labels() | head | _aggregate(entries, ATTACK_METRICS))
    attacks, sets = _order(rows, "attack"), _order(rows, "set")
    return sorted(
        rows,
        key=lambda r: (
            tuple(r[k] for k in LABELS[:3]),
            attacks[r["attack"]],
            sets[r["set"]],
            r["delta"] or 0.0,
            _calibration_rank(r["calibration"]),
        ),
    )


def model_table(groups: list[Group]) -> list[dict[str, Any]]:
    """One row per group x role x scores (``calibrated`` False: the model's plain softmax)."""
    rows = []
    for group in groups:
        cells: dict[tuple[str, str, str], list[tuple[Any, dict[str, str]]]] = {}
        for run in group.runs:
            for row in run.models:
                key = (row["role"], row["calibration"], row["calibrated"])
                cells.setdefault(key, []).append((run.seed, row))
        for (role, method, calibrated), entries in cells.items():
            head = {"role": role, "method": method, "calibrated": calibrated == "True"}
            rows.append(group.labels() | head | _aggregate(entries, MODEL_METRICS))
    return rows


def fpr_vs_delta(attack_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scaled sets' FPR per group and attack, one point per delta."""
    keep = (*LABELS, "attack", "delta", "fpr", "fpr_std", "n")
    return [{k: r[k] for k in keep} for r in attack_rows if r["delta"] is not None]


def _cell(row: dict[str, Any] | None, metric: str, n: int) -> str:
    if row is None:
        return "-"
    std = row.get(f"{metric}_std")
    text = f"{row[metric]:.3f}" + ("" if std is None else f" ± {std:.3f}")
    return text if row["n"] == n else f"{text} (n={row['n']})"


def _markdown(header: list[str], body: list[list[str]], text: int = 1) -> list[str]:
    """A Markdown table whose first ``text`` columns are left-aligned, the numbers right."""
    rule = "| " + " | ".join(["---"] * text + ["---:"] * (len(header) - text)) + " |"
    lines = ["| " + " | ".join(header) + " |", rule]
    return lines + ["| " + " | ".join(row) + " |" for row in body] + [""]


def _title(section: tuple[str, ...]) -> str:
    return ", ".join(part for part in section if part)


def attack_markdown(rows: list[dict[str, Any]], groups: list[Group], metrics: list[str]) -> str:
    """Per section and attack, one table per metric: non-member sets x calibration methods."""
    sizes = {(g.section, g.calibration): g.n for g in groups}
    lines = [
        "# Attack results",
        "",
        "Rows: non-member sets (`scaled_<delta>`: inputs scaled by delta); columns: calibration.",
        "Cells: mean ± sample std over seeds; n = seeds; (n=k) marks a cell with fewer seeds.",
        "",
    ]
    for section in dict.fromkeys(g.section for g in groups):
        columns = [g.calibration for g in groups if g.section == section]
        part = [r for r in rows if tuple(r[k] for k in LABELS[:3]) == section]
        for attack in dict.fromkeys(r["attack"] for r in part):
            cells = {
                (r["nonmember_set"], r["calibration"]): r for r in part if r["attack"] == attack
            }
            lines += [f"## {attack} attack: {_title(section)}", ""]
            header = ["non-member set"] + [f"{c} (n={sizes[section, c]})" for c in columns]
            for metric in metrics:
                body = [
                    [label]
                    + [_cell(cells.get((label, c)), metric, sizes[section, c]) for c in columns]
                    for label in dict.fromkeys(label for label, _ in cells)
                ]
                lines += [f"### {METRIC_NAMES.get(metric, metric)}", "", *_markdown(header, body)]
    return "\n".join(lines)


def model_markdown(rows: list[dict[str, Any]], groups: list[Group]) -> str:
    """Per section, accuracy and calibration of each model: role x calibration x scores."""
    sizes = {(g.section, g.calibration): g.n for g in groups}
    metrics = ("train_acc", "test_acc", "ece", "overconfidence_error")
    lines = [
        "# Models",
        "",
        "Scores `softmax`: the model's own softmax (for a calibrated run: before calibration).",
        "Cells: mean ± sample std over seeds.",
        "",
    ]
    for section in dict.fromkeys(g.section for g in groups):
        body = []
        for r in rows:
            if tuple(r[k] for k in LABELS[:3]) == section:
                n = sizes[section, r["calibration"]]
                scores = "softmax" if r["method"] == "none" or not r["calibrated"] else r["method"]
                body.append([r["role"], r["calibration"], scores, str(r["n"])])
                body[-1] += [_cell(r, m, n) for m in metrics]
        header = ["role", "calibration", "scores", "n", *metrics]
        lines += [f"## {_title(section)}", "", *_markdown(header, body, text=3)]
    return "\n".join(lines)


def _run_row(run: Run) -> dict[str, Any]:
    skipped = run.summary.get("skipped_sets") or {}
    row = {"path": str(run.path), "status": run.status, "reason": run.reason}
    row |= run.factors() | {
        "seed": run.config.get("seed", ""),
        "overrides": " ".join(run.overrides),
    }
    return row | {"skipped_sets": "; ".join(f"{k}: {v}" for k, v in skipped.items())}


def _log_runs(runs: list[Run]) -> None:
    complete = sum(r.status == "complete" for r in runs)
    log.info("%d run(s): %d complete, %d not", len(runs), complete, len(runs) - complete)
    for run in runs:
        if run.status != "complete":
            log.warning("%s run %s: %s (left out of every table)", run.status, run.path, run.reason)


def _run_paths(cfg: DictConfig) -> list[str]:
    if OmegaConf.is_missing(cfg, "runs") or cfg.runs is None:
        raise ValueError(
            f"runs is required: python evaluate.py runs=<run or sweep dir>; {RUN_HINT}"
        )
    value = cfg.runs
    return [str(v) for v in value] if OmegaConf.is_list(value) else [str(value)]


def _overview(runs: list[Run], files: list[Path], figures: list[Path]) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in ("complete", "failed", "missing")}
    lines = ["# Report", "", ", ".join(f"{v} {k}" for k, v in counts.items()) + " runs", ""]
    bad = [[str(r.path), r.status, r.reason] for r in runs if r.status != "complete"]
    if bad:
        lines += ["## Left out", "", *_markdown(["run", "status", "reason"], bad, text=3)]
    lines += ["## Tables", "", *(f"- [{f.name}]({f.name})" for f in files), ""]
    lines += ["## Figures", "", *(f"![{f.stem}]({f.name})" for f in figures)]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Write the report of the runs under ``cfg.runs``; returns what it found and wrote."""
    paths = _run_paths(cfg)
    runs = discover(paths)
    out = Path(cfg.output_dir) if cfg.get("output_dir") else Path(paths[0]) / "report"
    _log_runs(runs)
    groups = group_runs(runs, list(cfg.ignore_keys))
    attacks, models = attack_table(groups), model_table(groups)
    points = fpr_vs_delta(attacks)
    files = [out / n for n in ("runs.csv", "attack_table.csv", "attack_table.md")]
    files += [out / n for n in ("model_table.csv", "model_table.md")]
    write_csv(files[0], [_run_row(r) for r in runs], RUN_COLUMNS)
    write_csv(files[1], attacks, ATTACK_TABLE_COLUMNS)
    write_text(files[2], attack_markdown(attacks, groups, list(cfg.table_metrics)))
    write_csv(files[3], models, MODEL_TABLE_COLUMNS)
    write_text(files[4], model_markdown(models, groups))
    figures, skipped = [], {}
    if cfg.figures:
        options = plots.PlotOptions(**OmegaConf.to_container(cfg.plot))
        figures, skipped = plots.write_figures(out, groups, attacks, points, options)
    write_text(out / "report.md", _overview(runs, files, figures))
    log.info("report with %d table(s) and %d figure(s) in %s", len(files), len(figures), out)
    return {
        "report_dir": out,
        "runs": [_run_row(r) for r in runs],
        "complete": [str(r.path) for r in runs if r.status == "complete"],
        "failed": {str(r.path): r.reason for r in runs if r.status == "failed"},
        "missing": {str(r.path): r.reason for r in runs if r.status == "missing"},
        "groups": [g.labels() | {"n": g.n, "runs": [str(r.path) for r in g.runs]} for g in groups],
        "attack_table": attacks,
        "model_table": models,
        "fpr_vs_delta": points,
        "files": [*files, out / "report.md"],
        "figures": figures,
        "skipped_figures": skipped,
    }
