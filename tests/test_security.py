"""Security: no unsafe deserialization, no shell, no leaked secrets, config paths used verbatim."""

from __future__ import annotations

import ast
import gzip
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from mia.architectures import salem_cnn
from mia.model_cache import ModelCache, load_weights
from mia.outputs import Outputs, OutputStore
from mia.study import run
from tests.conftest import ROOT, TINY, compose_config

ENTRY_SCRIPTS = [ROOT / "train.py", ROOT / "attack.py", ROOT / "evaluate.py"]
PACKAGE = sorted((ROOT / "mia").rglob("*.py"))
PROJECT = PACKAGE + ENTRY_SCRIPTS + sorted((ROOT / "bench").rglob("*.py"))
PROJECT += sorted((ROOT / "tests").rglob("*.py"))
FAKE_WANDB_KEY = "3f9a1c0b7e2d4a6f8b1c3e5d7f9a0b2c4d6e8f01"  # 40 hex chars, like a real key
FAKE_TOKEN = "tok-5d41402abc4b2a76b9719d911017c592-secret"


# ----------------------------------------------------------------------------- ast scans


def _imports(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin, e.g. {"np": "numpy", "tload": "torch.load"}."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, names: dict[str, str]) -> str:
    """The dotted name a call goes to ("torch.load"), with import aliases resolved."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(names.get(node.id, node.id))
    return ".".join(reversed(parts))


def calls(source: str, filename: str = "<snippet>") -> Iterator[tuple[str, ast.Call]]:
    """(dotted callee, call node) for every call in ``source``."""
    tree = ast.parse(source, filename=filename)
    names = _imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield _dotted(node.func, names), node


def keyword_is(call: ast.Call, name: str, value: object) -> bool:
    """True when ``call`` passes ``name=<the literal value>`` (not a variable, not **kwargs)."""
    return any(
        kw.arg == name and isinstance(kw.value, ast.Constant) and kw.value.value is value
        for kw in call.keywords
    )


def unsafe_torch_loads(source: str) -> list[int]:
    return [
        c.lineno
        for name, c in calls(source)
        if name == "torch.load" and not keyword_is(c, "weights_only", True)
    ]


UNPICKLERS = {
    *("pickle.load", "pickle.loads", "pickle.Unpickler", "pandas.read_pickle", "joblib.load"),
    *("dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads"),
}


def unsafe_unpickling(source: str) -> list[int]:
    found = []
    for name, c in calls(source):
        pickled_npy = name == "numpy.load" and any(
            kw.arg == "allow_pickle" and not keyword_is(c, "allow_pickle", False)
            for kw in c.keywords
        )
        if name in UNPICKLERS or pickled_npy:
            found.append(c.lineno)
    return found


SHELLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
          "asyncio.create_subprocess_shell", "os.spawnlp", "os.execlp", "pty.spawn"}  # fmt: skip


def shell_calls(source: str) -> list[int]:
    found = []
    for name, c in calls(source):
        shell = name.startswith("subprocess.") and any(
            kw.arg == "shell" and not keyword_is(c, "shell", False) for kw in c.keywords
        )
        if name in SHELLS or shell:
            found.append(c.lineno)
    return found


def offenders(files: list[Path], check) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}" for path in files for line in check(path.read_text())
    ]


def test_scanners_catch_what_they_look_for() -> None:
    """The scans below would see a violation, however the names were imported."""
    assert unsafe_torch_loads("import torch\ntorch.load(p)") == [2]
    assert unsafe_torch_loads("import torch as T\nT.load(p, weights_only=False)") == [2]
    assert unsafe_torch_loads("from torch import load\nload(p, **kw)") == [2]
    assert unsafe_torch_loads("import torch\nflag = True\ntorch.load(p, weights_only=flag)") == [3]
    assert unsafe_torch_loads("import torch\ntorch.load(p, weights_only=True)") == []
    assert unsafe_unpickling("import pickle\npickle.loads(b)") == [2]
    assert unsafe_unpickling("from pickle import load\nload(f)") == [2]
    assert unsafe_unpickling("import numpy as np\nnp.load(p, allow_pickle=True)") == [2]
    assert unsafe_unpickling("import numpy as np\nnp.load(p, allow_pickle=False)") == []
    assert shell_calls("import os\nos.system(c)") == [2]
    assert shell_calls("import subprocess as sp\nsp.run(c, shell=True)") == [2]
    assert shell_calls("from subprocess import Popen\nimport subprocess\nsubprocess.Popen(c)") == []
    assert shell_calls("import os\nos.popen(c)") == [2]


def test_every_torch_load_is_weights_only() -> None:
    sites = [(p, c) for p in PROJECT for n, c in calls(p.read_text(), str(p)) if n == "torch.load"]
    scanned = {p.relative_to(ROOT).as_posix() for p, _ in sites}
    assert {"mia/model_cache.py", "mia/outputs.py"} <= scanned  # the scan sees the real loads
    bad = offenders(PROJECT, unsafe_torch_loads)
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_no_unpickling_in_the_package() -> None:
    bad = offenders(PACKAGE, unsafe_unpickling)
    assert not bad, f"pickle loads (or np.load with allow_pickle) in mia/: {bad}"


def test_no_shell_commands() -> None:
    bad = offenders(PACKAGE + ENTRY_SCRIPTS, shell_calls)
    assert not bad, f"shell commands (os.system, os.popen, shell=True) in: {bad}"


# ----------------------------------------------------------------------------- pickles


class Payload:
    """Unpickling this object runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _payload_is_live(checkpoint: Path, marker: Path) -> None:
    """Control: an unrestricted unpickler does run the payload saved in ``checkpoint``."""
    with zipfile.ZipFile(checkpoint) as archive:
        blob = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    pickle.loads(blob)
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("shape", ["bare object", "inside a state dict"])
def test_malicious_checkpoint_is_refused_and_never_runs(shape: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    net = salem_cnn(1, 8, 10)
    payload = Payload(marker)
    state = payload if shape == "bare object" else {**net.state_dict(), "evil": payload}
    checkpoint = tmp_path / "evil.pt"
    torch.save(state, checkpoint)
    if shape == "bare object":
        _payload_is_live(checkpoint, marker)

    with pytest.raises(ValueError) as info:
        load_weights(checkpoint, net, "architecture salem_cnn with 10 classes")
    assert f"checkpoint {checkpoint}" in str(info.value) and "weights only" in str(info.value)
    assert not marker.exists()

    cache = ModelCache(tmp_path / "cache")
    entry = cache.store("evilkey", net, {"spec": {}})
    torch.save(state, entry / "weights.pt")
    with pytest.raises(ValueError) as info:
        cache.load("evilkey", salem_cnn(1, 8, 10), "architecture salem_cnn with 10 classes")
    assert str(entry / "weights.pt") in str(info.value) and "weights only" in str(info.value)
    assert not marker.exists()


def test_malicious_output_cache_entry_is_recomputed_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    generator = torch.Generator().manual_seed(0)
    real = Outputs(torch.randn(6, 4, generator=generator), torch.randn(6, 3, generator=generator),
                   torch.arange(6) % 3)  # fmt: skip
    computed = []

    def compute() -> Outputs:
        computed.append(1)
        return real

    set_id = {"set": "scaled", "delta": 255.0, "ood": None, "seed": 0}
    OutputStore(tmp_path / "outputs").get("modelkey", set_id, compute)
    (entry,) = (tmp_path / "outputs" / "modelkey").glob("*.pt")
    torch.save({"logits": Payload(marker), "features": real.features}, entry)

    store = OutputStore(tmp_path / "outputs")
    got = store.get("modelkey", set_id, compute)
    assert not marker.exists()
    assert len(computed) == 2 and store.computed and not store.loaded
    assert torch.equal(got.logits, real.logits) and torch.equal(got.features, real.features)
    again = OutputStore(tmp_path / "outputs")  # the entry was replaced by a clean one
    assert torch.equal(again.get("modelkey", set_id, compute).logits, real.logits)
    assert len(computed) == 2 and again.loaded and not marker.exists()


# ----------------------------------------------------------------------------- secrets


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for both logger runs: the second loads the models instead of training."""
    return tmp_path_factory.mktemp("models") / "cache"


@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_secrets_never_reach_configs_logs_or_results(
    logger: str, shared_cache: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    args = [o for o in TINY if not o.startswith(("logger=", "attack."))] + [f"logger={logger}"]
    args += ["attack=threshold"]  # no Salem model to train: the test is about the files
    args += [f"hydra.run.dir={run_dir}", f"paths.cache_dir={shared_cache}"]
    env = {**os.environ, "WANDB_API_KEY": FAKE_WANDB_KEY, "MY_SECRET_TOKEN": FAKE_TOKEN,
           "WANDB_MODE": "offline"}  # fmt: skip
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    files = [p for p in [*run_dir.rglob("*"), *shared_cache.rglob("*")] if p.is_file()]
    names = {p.relative_to(run_dir).as_posix() for p in files if p.is_relative_to(run_dir)}
    expected = {"config.yaml", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
                "train.log", "results/summary.json", "results/attacks.csv"}  # fmt: skip
    assert expected <= names  # what is grepped below includes everything a run leaves
    if logger == "csv":
        assert any(n.startswith("logs/") and n.endswith("metrics.csv") for n in names)
        assert any(n.startswith("logs/") and n.endswith("hparams.yaml") for n in names)
    else:
        assert any(n.startswith("wandb/offline-run-") for n in names)
    leaks = {
        str(p): secret
        for p in files
        for secret in (FAKE_WANDB_KEY, FAKE_TOKEN, FAKE_WANDB_KEY[:16], FAKE_WANDB_KEY[-16:])
        if secret.encode() in p.read_bytes()
    }
    assert not leaks, leaks
    console = done.stdout + done.stderr
    assert FAKE_WANDB_KEY[:16] not in console and FAKE_WANDB_KEY[-16:] not in console
    assert FAKE_TOKEN not in console
    assert OmegaConf.load(run_dir / "config.yaml").logger.get("mode", "offline") == "offline"


# ----------------------------------------------------------------------------- paths


def _idx(path: Path, array: np.ndarray, code: int) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file, the format of (Fashion-)MNIST."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fake_fashion_package(folder: Path) -> None:
    """A tiny stand-in for the Debian Fashion-MNIST package (gzipped IDX files)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 30), ("t10k", 20)):
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)), 8)
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10, 8)


def test_config_paths_are_used_verbatim(tmp_path: Path) -> None:
    """Spaces, '&', '$HOME', quotes and non-ASCII in paths: nothing is expanded or split."""
    odd = {k: tmp_path / f"{k} with space & $HOME 'q' ü" for k in ("output", "cache", "data")}
    system_dir = tmp_path / "fashion package"
    _fake_fashion_package(system_dir)
    overrides = [o for o in TINY if not o.startswith("logger=")] + ["logger=csv"]
    overrides += ["nonmember_sets=[original]", "attack=threshold"]
    overrides = [o for o in overrides if "salem" not in o]
    cfg = compose_config(overrides, tmp_path)
    with open_dict(cfg):
        cfg.paths.output_dir = str(odd["output"])
        cfg.paths.cache_dir = str(odd["cache"])
        cfg.paths.data_dir = str(odd["data"])
        cfg.dataset.ood = [{"name": "fashion_mnist", "system_dir": str(system_dir)}]
    summary = run(cfg)

    assert summary["skipped_sets"] == {}  # the OOD set was read from paths.data_dir
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [system_dir.name, *(p.name for p in odd.values())]
    )
    out = odd["output"]
    for name in ("config.yaml", "splits.npz", "results/summary.json", "results/attacks.csv",
                 "checkpoints/target.pt", "checkpoints/shadow.pt"):  # fmt: skip
        assert (out / name).is_file(), name
    assert list(out.glob("logs/**/metrics.csv"))  # the CSV logger's save_dir is output_dir
    assert len(list(odd["cache"].glob("*/weights.pt"))) == 2
    assert list((odd["cache"] / "outputs").glob("*/*.pt"))
    raw = odd["data"] / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        f"{p}-{k}-idx{d}-ubyte"
        for p in ("train", "t10k")
        for k, d in (("images", 3), ("labels", 1))
    )
    saved = OmegaConf.load(out / "config.yaml").paths
    assert (saved.output_dir, saved.cache_dir, saved.data_dir) == tuple(
        str(odd[k]) for k in ("output", "cache", "data")
    )
    assert not (Path.cwd() / odd["output"].name).exists()
