"""Time the last-layer Laplace predictive against plain forward passes over a study's sets.

A salem_cnn is trained briefly on Fashion-MNIST, ``LastLayerLaplace`` (grid prior, MC predictive
with 100 samples) is fitted on it, and then, over the sets of the default study (2 x 2500
train/test plus 8 non-member sets of 1000 inputs, about 13,000 inputs):

(a) plain: forward passes producing the logits of every set;
(b) Laplace: the same forward pass to features and logits plus the closed-form predictive.

Also timed on a 500-input subset and scaled up: laplace-torch's own last-layer predictive, both
on the whole network (raw inputs) and on the head (features). Prints figures, asserts nothing.

Run: ``python bench/laplace_predictive.py [--steps 300] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from laplace import Laplace
from torch.utils.data import DataLoader, TensorDataset

from mia.architectures import Net, salem_cnn
from mia.calibration import CalibrationData
from mia.data import load_source, normalize, to_float
from mia.laplace import FIT_BATCH_SIZE, LastLayerLaplace
from mia.nonmember import gaussian_noise, permute_pixels, uniform_noise
from mia.outputs import forward

BATCH = 1024  # the study's eval_batch_size
TRAIN, TEST, NONMEMBER = 2500, 2500, 1000
LIBRARY_SUBSET = 500


def best_of(repeats: int, **fns: Callable[[], object]) -> dict[str, float]:
    """The fastest of ``repeats`` wall-clock timings (s) of each function, run interleaved.

    Interleaving gives every figure the same share of whatever else the machine is doing.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def build_sets(root: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The study's sets (normalized inputs), plus labels of the train and calibration sets."""
    source = load_source("fashion_mnist", root=root)
    g = torch.Generator().manual_seed(0)
    norm = lambda x: normalize(x, source.mean, source.std)  # noqa: E731
    test = to_float(source.test.images[: TEST + 6 * NONMEMBER])
    originals = test[TEST : TEST + NONMEMBER]
    shape = source.image_shape
    sets = {
        "train": norm(to_float(source.train.images[:TRAIN])),
        "test": norm(test[:TEST]),
        "original": norm(originals),
        "scaled_10": 10 * norm(originals),
        "scaled_100": 100 * norm(originals),
        "scaled_1000": 1000 * norm(originals),
        "permuted": norm(permute_pixels(test[TEST + NONMEMBER : TEST + 2 * NONMEMBER], g)),
        "unnormalized": test[TEST + 2 * NONMEMBER : TEST + 3 * NONMEMBER],
        "uniform_noise": norm(uniform_noise(NONMEMBER, shape, g)),
        "gaussian_noise": norm(gaussian_noise(NONMEMBER, shape, g)),
        "calibration": norm(test[TEST + 3 * NONMEMBER :]),  # fit only, not timed
        "noise_for_fit": norm(uniform_noise(NONMEMBER, shape, g)),  # fit only, not timed
    }
    labels = {
        "train": source.train.labels[:TRAIN],
        "calibration": source.test.labels[TEST + 3 * NONMEMBER : TEST + 6 * NONMEMBER],
    }
    return sets, labels["train"], labels["calibration"]


def train(net: Net, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """Plain Adam (lr 1e-3, batch 64) for ``steps`` steps, reshuffling each epoch."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    net.train()
    step = 0
    while step < steps:
        for index in torch.randperm(len(x), generator=g).split(64):
            optimizer.zero_grad()
            F.cross_entropy(net(x[index]), y[index]).backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of training")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (best kept)")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    torch.manual_seed(0)
    sets, train_labels, calib_labels = build_sets(args.data_root)
    timed = [k for k in sets if k not in ("calibration", "noise_for_fit")]
    n_inputs = sum(len(sets[k]) for k in timed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    net = salem_cnn(1, 28, 10)
    start = time.perf_counter()
    train(net, sets["train"], train_labels, args.steps)
    print(f"trained salem_cnn {args.steps} steps in {time.perf_counter() - start:.1f} s")

    calibration = LastLayerLaplace()
    data = CalibrationData(
        train=forward(net, sets["train"], train_labels, BATCH),
        calib=forward(net, sets["calibration"], calib_labels, BATCH),
        noise=forward(net, sets["noise_for_fit"], None, BATCH),
    )
    start = time.perf_counter()
    calibration.fit(net, data)
    print(
        f"fitted LastLayerLaplace (grid of {len(calibration.prior_variances)}, mc 100) in "
        f"{time.perf_counter() - start:.2f} s: {calibration.params()}"
    )
    laplace_acc = (calibration.probs(data.calib).argmax(1) == calib_labels).float().mean()
    plain_acc = (data.calib.logits.argmax(1) == calib_labels).float().mean()
    print(f"calibration-split accuracy: plain {plain_acc:.3f}, Laplace {laplace_acc:.3f}")
    report_timings(net, calibration, sets, timed, n_inputs, args.repeats)
    report_library(net, calibration, sets, train_labels, n_inputs, args.repeats)


@torch.inference_mode()
def plain_logits(net: Net, x: torch.Tensor) -> torch.Tensor:
    """(N, C) logits of ``x`` in eval batches: what a study without calibration computes."""
    return torch.cat([net(batch) for batch in x.split(BATCH)])


def report_timings(net, calibration, sets, timed, n_inputs, repeats) -> None:
    """(a) plain forward passes vs (b) forward to features + the Laplace predictive."""
    outputs = {k: forward(net, sets[k], None, BATCH) for k in timed}
    times = best_of(
        repeats,
        plain=lambda: [plain_logits(net, sets[k]) for k in timed],
        laplace=lambda: [calibration.probs(forward(net, sets[k], None, BATCH)) for k in timed],
        predictive=lambda: [calibration.probs(outputs[k]) for k in timed],
    )
    plain, laplace, predictive = times["plain"], times["laplace"], times["predictive"]
    print(f"\n{len(timed)} sets, {n_inputs} inputs of shape (1, 28, 28), best of {repeats}:")
    print(f"  (a) plain forward (logits):               {plain:8.3f} s")
    print(f"  (b) forward + Laplace predictive (mc 100): {laplace:8.3f} s")
    print(f"      of which the predictive from features: {predictive:8.3f} s")
    print(f"  ratio (b)/(a): {laplace / plain:.2f}  (target <= 2)")


def report_library(net, calibration, sets, train_labels, n_inputs, repeats) -> None:
    """laplace-torch's own GLM predictive (mc 100) on a subset, scaled to all inputs."""
    full = Laplace(net, "classification", "last_layer", "kron", last_layer_name="head")
    full.fit(DataLoader(TensorDataset(sets["train"], train_labels), batch_size=FIT_BATCH_SIZE))
    full.prior_precision = calibration.laplace.prior_precision
    x = sets["test"][:LIBRARY_SUBSET]
    features = forward(net, x, None, BATCH).features.clone()  # normal tensor for autograd
    kwargs = {"pred_type": "glm", "link_approx": "mc", "n_samples": 100}
    times = best_of(
        repeats,
        whole=lambda: full(x, **kwargs),
        head=lambda: calibration.laplace(features, **kwargs),
    )
    whole, head = times["whole"], times["head"]
    scale = n_inputs / LIBRARY_SUBSET
    print(f"\nlaplace-torch's own predictive, {LIBRARY_SUBSET} inputs scaled x{scale:.0f}:")
    print(f"  whole network (forward + Jacobians + mc): {whole * scale:8.3f} s")
    print(f"  head only, from features:                {head * scale:8.3f} s")


if __name__ == "__main__":
    main()
