"""Membership inference attacks on prediction scores.

An attack is fitted on the SHADOW model's outputs for its members and non-members and then
applied to the TARGET model's outputs. Outputs are :class:`AttackInputs` (probabilities, plus
labels and reference-model outputs for the attacks that need them); score-only attacks also take
a plain (N, C) probability tensor. It never learns
which non-member set it is later applied to. Usage mirrors laplace-torch's ``Laplace``::

    attack = make_attack("threshold").fit(shadow_member_probs, shadow_nonmember_probs)
    scores = attack.score(target_probs)  # (N,) higher = member
    calls = attack.decide(scores)        # (N,) bool

Adding an attack means writing one :class:`Attack` subclass and registering it in
:data:`ATTACKS`.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import EarlyStopping
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from mia import metrics

log = logging.getLogger(__name__)


@dataclass
class AttackInputs:
    """What an attack may look at for N examples queried against one model."""

    probs: Tensor  # (N, C) the attacked model's (calibrated) probabilities
    labels: Tensor | None = None  # (N,) true labels, or the model's predictions where none exist
    reference_probs: Tensor | None = None  # (M, N, C) probabilities of M reference models
    reference_in: Tensor | None = None  # (M, N) bool: reference m was trained on example n
    # population samples z: non-members of the attacked model queried against the SAME model,
    # with their own reference_probs/reference_in (RMIA compares every example with them)
    population: AttackInputs | None = None

    def __len__(self) -> int:
        return len(self.probs)


def as_inputs(x: Tensor | AttackInputs) -> AttackInputs:
    """Accept a bare (N, C) probability tensor wherever attack inputs are expected."""
    return x if isinstance(x, AttackInputs) else AttackInputs(probs=x)


class Attack:
    """Base class: fit on shadow probabilities, score and decide on target probabilities."""

    name: ClassVar[str]

    def __init__(self) -> None:
        """Create an unfitted attack."""
        self._fitted = False

    def fit(self, member_probs: Tensor, nonmember_probs: Tensor) -> Attack:
        """Fit the attack on the shadow model's (N, C) member and non-member probabilities."""
        raise NotImplementedError

    def score(self, probs: Tensor) -> Tensor:
        """Return (N,) membership scores for (N, C) probabilities; higher = member."""
        raise NotImplementedError

    def decide(self, scores: Tensor) -> Tensor:
        """Return (N,) bool membership calls for scores produced by :meth:`score`."""
        raise NotImplementedError

    def params(self) -> dict[str, float]:
        """Return the fitted parameters worth recording (e.g. the threshold)."""
        return {}

    def _check_probs(self, x: Tensor | AttackInputs, what: str) -> AttackInputs:
        """Return ``x`` as inputs; raise ValueError unless its probs are non-empty (N, C) floats."""
        x = as_inputs(x)
        probs = x.probs
        if probs.ndim != 2 or probs.shape[0] == 0 or not probs.is_floating_point():
            raise ValueError(
                f"attack {self.name!r}: {what} must be a non-empty (N, C) float tensor, "
                f"got shape {tuple(probs.shape)} and dtype {probs.dtype}"
            )
        return x

    def _labels(self, x: AttackInputs, what: str) -> Tensor:
        """The labels of ``x``; label-dependent attacks cannot run without them."""
        if x.labels is None:
            raise ValueError(f"attack {self.name!r} needs labels for {what}; none were given")
        return x.labels

    def _check_fitted(self) -> None:
        """Raise RuntimeError when the attack is used before :meth:`fit`."""
        if not self._fitted:
            raise RuntimeError(f"attack {self.name!r} must be fitted before use")

    def __repr__(self) -> str:
        """Show the attack name and its fitted parameters."""
        return f"{type(self).__name__}({self.params()})"


class _ScoreThresholdAttack(Attack):
    """Attack that thresholds a fixed score function; the threshold is fitted on the shadow ROC."""

    def __init__(self) -> None:
        """Create an unfitted attack with no threshold."""
        super().__init__()
        self.threshold = math.nan

    def _raw_score(self, x: AttackInputs) -> Tensor:
        """Return the (N,) score of each example."""
        raise NotImplementedError

    def _objective(self, fpr: Tensor, tpr: Tensor, n_pos: int, n_neg: int) -> Tensor:
        """Return the quantity to maximise at each ROC point."""
        raise NotImplementedError

    def fit(self, member_probs: Tensor, nonmember_probs: Tensor) -> Attack:
        """Pick the shadow ROC threshold that maximises :meth:`_objective`."""
        member_scores = self._raw_score(self._check_probs(member_probs, "member_probs"))
        nonmember_scores = self._raw_score(self._check_probs(nonmember_probs, "nonmember_probs"))
        return self._fit_threshold(member_scores, nonmember_scores)

    def _fit_threshold(self, member_scores: Tensor, nonmember_scores: Tensor) -> Attack:
        """Set the threshold on the shadow's exact ROC that maximises :meth:`_objective`."""
        scores = torch.cat([member_scores, nonmember_scores])  # (P + Q,)
        is_member = torch.arange(len(scores), device=scores.device) < len(member_scores)
        fpr, tpr, thresholds = metrics.roc(scores, is_member)
        # argmax returns the first maximum, i.e. the highest threshold among ties
        objective = self._objective(fpr, tpr, len(member_scores), len(nonmember_scores))
        best = int(torch.argmax(objective))
        self.threshold = float(thresholds[best])
        self._fitted = True
        log.debug("%s: threshold %.6g (tpr %.4f, fpr %.4f)", self.name, self.threshold,
                  tpr[best], fpr[best])  # fmt: skip
        return self

    def score(self, probs: Tensor) -> Tensor:
        """Return the (N,) attack score of (N, C) probabilities; higher = member."""
        return self._raw_score(self._check_probs(probs, "probs"))

    def decide(self, scores: Tensor) -> Tensor:
        """Call a member iff ``score >= threshold``; shape (N,) bool."""
        self._check_fitted()
        return scores >= self.threshold

    def params(self) -> dict[str, float]:
        """Return the fitted threshold."""
        return {"threshold": self.threshold}


class ThresholdAttack(_ScoreThresholdAttack):
    """Max-prediction-score threshold; threshold maximises TPR - FPR on the shadow ROC."""

    name: ClassVar[str] = "threshold"

    def _raw_score(self, x: AttackInputs) -> Tensor:
        """Return the max prediction score, shape (N,)."""
        return metrics.max_score(x.probs)

    def _objective(self, fpr: Tensor, tpr: Tensor, n_pos: int, n_neg: int) -> Tensor:
        """Youden's J statistic."""
        return tpr - fpr


class EntropyAttack(_ScoreThresholdAttack):
    """Negative-entropy threshold; threshold maximises accuracy on the shadow sets."""

    name: ClassVar[str] = "entropy"

    def _raw_score(self, x: AttackInputs) -> Tensor:
        """Return minus the prediction entropy (low entropy = member), shape (N,)."""
        return -metrics.entropy(x.probs)

    def _objective(self, fpr: Tensor, tpr: Tensor, n_pos: int, n_neg: int) -> Tensor:
        """Accuracy at each ROC point, from the rates and the class counts."""
        return (tpr * n_pos + (1 - fpr) * n_neg) / (n_pos + n_neg)


class LossAttack(_ScoreThresholdAttack):
    """Yeom et al.: threshold on the cross-entropy loss of the label (low loss = member).

    The threshold maximises TPR - FPR on the shadow's ROC, like ``threshold``.
    """

    name: ClassVar[str] = "loss"

    def _raw_score(self, x: AttackInputs) -> Tensor:
        """Return log p_label = minus the loss, shape (N,)."""
        probs = x.probs.double().clamp_min(metrics.NLL_EPS)
        return probs.gather(1, self._labels(x, "loss").long()[:, None]).squeeze(1).log()

    def _objective(self, fpr: Tensor, tpr: Tensor, n_pos: int, n_neg: int) -> Tensor:
        return tpr - fpr


class ModifiedEntropyAttack(_ScoreThresholdAttack):
    """Song and Mittal: threshold on the modified prediction entropy using the label.

    Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i); low = member. One global
    threshold, maximising accuracy on the shadow sets.
    """

    name: ClassVar[str] = "modified_entropy"

    def _raw_score(self, x: AttackInputs) -> Tensor:
        """Return minus the modified entropy, shape (N,)."""
        probs = x.probs.double()
        eps = metrics.NLL_EPS
        is_label = F.one_hot(self._labels(x, "modified_entropy").long(), probs.shape[1]).bool()
        label_term = (1 - probs) * probs.clamp_min(eps).log()  # for i = y
        other_term = probs * (1 - probs).clamp_min(eps).log()  # for i != y
        return torch.where(is_label, label_term, other_term).sum(dim=1)

    def _objective(self, fpr: Tensor, tpr: Tensor, n_pos: int, n_neg: int) -> Tensor:
        return (tpr * n_pos + (1 - fpr) * n_neg) / (n_pos + n_neg)


class SalemMLP(pl.LightningModule):
    """Salem et al.'s attack model: Linear(k, hidden) -> ReLU -> Linear(hidden, 1) logits."""

    def __init__(self, k: int = 3, hidden: int = 64, lr: float = 1e-3) -> None:
        """Build the MLP for top-``k`` sorted prediction scores."""
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(k, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.best_val_loss = math.inf
        self.best_state: dict[str, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, k) top-k scores to (B,) membership logits."""
        return self.net(x).squeeze(-1)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Return the BCE-with-logits loss of one (x, y) batch."""
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Return the training loss of one batch."""
        return self._loss(batch)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log the validation loss (averaged over the epoch) for early stopping."""
        self.log("val_loss", self._loss(batch), on_epoch=True, batch_size=len(batch[1]))

    def on_validation_epoch_end(self) -> None:
        """Keep a copy of the weights with the lowest validation loss so far."""
        val_loss = float(self.trainer.callback_metrics["val_loss"])
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.best_state = copy.deepcopy(self.state_dict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Use Adam with the configured learning rate."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@contextmanager
def _quiet_lightning():
    """Silence Lightning's info messages and expected warnings for the many small fits."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # in-memory (N, k) tensors: worker processes would only add overhead
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def _single_cpu_thread():
    """Run torch on one intra-op CPU thread, restoring the previous count afterwards.

    The MLP's ops are far too small to gain from threads, and on a busy machine OpenMP's
    thread synchronisation made each fit ~10x slower than single-threaded in our tests.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _top_k(probs: Tensor, k: int) -> Tensor:
    """Return the k largest scores of each row in descending order, shape (N, k)."""
    return torch.topk(probs.float(), k, dim=1).values


class SalemAttack(Attack):
    """Salem et al.'s (2019) MLP attack on the top-k sorted prediction scores.

    The MLP is trained with BCE on the shadow scores (members = 1), early-stopped on a
    stratified held-out fraction and restored to its best validation epoch. Scores are
    sigmoid outputs computed in float64 so very confident calls stay distinct instead of
    saturating to exactly 1.0 (ties would blur TPR at low FPR).
    """

    name: ClassVar[str] = "salem"
    threshold: ClassVar[float] = 0.5  # on the MLP's member probability

    def __init__(
        self,
        k: int = 3,
        hidden: int = 64,
        lr: float = 1e-3,
        batch_size: int = 64,
        max_epochs: int = 100,
        patience: int = 5,
        val_fraction: float = 0.2,
        seed: int = 0,
        accelerator: str = "cpu",
    ) -> None:
        """Validate and store the options; see the class docstring."""
        super().__init__()
        for option, value in (
            ("k", k),
            ("hidden", hidden),
            ("batch_size", batch_size),
            ("max_epochs", max_epochs),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"attack.{option} must be an integer >= 1, got {value!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"attack.patience must be an integer >= 0, got {patience!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"attack.lr must be a finite number > 0, got {lr!r}")
        if not (isinstance(val_fraction, float) and 0.0 < val_fraction < 1.0):
            raise ValueError(f"attack.val_fraction must be a float in (0, 1), got {val_fraction!r}")
        if not isinstance(seed, int):
            raise ValueError(f"attack.seed must be an integer, got {seed!r}")
        self.k, self.hidden, self.lr = k, hidden, float(lr)
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.val_fraction, self.seed, self.accelerator = val_fraction, seed, accelerator
        self.model: SalemMLP | None = None
        self.epochs_trained = 0

    def _features(self, x: Tensor | AttackInputs, what: str) -> Tensor:
        """Validate (N, C) probabilities and return their (N, k) sorted top-k scores."""
        probs = self._check_probs(x, what).probs
        if probs.shape[1] < self.k:
            raise ValueError(
                f"attack.k={self.k} exceeds the number of classes ({probs.shape[1]}) in {what}"
            )
        return _top_k(probs, self.k)

    def _loaders(self, x: Tensor, y: Tensor) -> tuple[DataLoader, DataLoader]:
        """Split (x, y) stratified by membership and wrap both parts in data loaders."""
        train_idx, val_idx = train_test_split(
            torch.arange(len(y)).numpy(),
            test_size=self.val_fraction,
            stratify=y.numpy(),
            random_state=self.seed,
        )
        train_idx, val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        generator = torch.Generator().manual_seed(self.seed)
        train = DataLoader(
            TensorDataset(x[train_idx], y[train_idx]),
            self.batch_size,
            shuffle=True,
            generator=generator,
        )
        val = DataLoader(TensorDataset(x[val_idx], y[val_idx]), self.batch_size)
        return train, val

    def fit(self, member_probs: Tensor, nonmember_probs: Tensor) -> Attack:
        """Train the MLP on shadow top-k scores; deterministic for a fixed ``seed``."""
        member_x = self._features(member_probs, "member_probs")  # (P, k)
        nonmember_x = self._features(nonmember_probs, "nonmember_probs")  # (N, k)
        x = torch.cat([member_x, nonmember_x]).cpu()  # (P + N, k)
        y = torch.cat([torch.ones(len(member_x)), torch.zeros(len(nonmember_x))])
        train, val = self._loaders(x, y)
        # fork_rng: seed init and training without touching the caller's global RNG state
        with torch.random.fork_rng(devices=[]), _quiet_lightning(), _single_cpu_thread():
            torch.manual_seed(self.seed)
            model = SalemMLP(self.k, self.hidden, self.lr)
            trainer = pl.Trainer(
                max_epochs=self.max_epochs,
                callbacks=[EarlyStopping("val_loss", patience=self.patience, mode="min")],
                accelerator=self.accelerator,
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
            )
            trainer.fit(model, train, val)
        if model.best_state is not None:
            model.load_state_dict(model.best_state)
        self.model = model.eval()
        self.epochs_trained = trainer.current_epoch
        self._fitted = True
        log.debug("salem: %d epochs, best val loss %.4f", self.epochs_trained, model.best_val_loss)
        return self

    @torch.no_grad()
    def score(self, probs: Tensor) -> Tensor:
        """Return the MLP's (N,) member probability (float64 sigmoid of its logit)."""
        self._check_fitted()
        x = self._features(probs, "probs")  # (N, k)
        device = next(self.model.parameters()).device
        logits = self.model(x.to(device))  # (N,)
        return torch.sigmoid(logits.double()).to(x.device)

    def decide(self, scores: Tensor) -> Tensor:
        """Call a member iff the MLP's member probability is >= 0.5; shape (N,) bool."""
        self._check_fitted()
        return scores >= self.threshold

    def params(self) -> dict[str, float]:
        """Return the decision threshold, the best validation loss and the epochs trained."""
        if self.model is None:
            return {}
        best = self.model.best_val_loss
        return {"threshold": self.threshold, "val_loss": best, "epochs": float(self.epochs_trained)}


ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (ThresholdAttack, EntropyAttack, SalemAttack, LossAttack, ModifiedEntropyAttack)
}


def make_attack(name: str, **options: object) -> Attack:
    """Build the attack registered as ``name`` with the given options.

    Raises:
        ValueError: for an unknown attack name, an unknown option or an invalid value.
    """
    if name not in ATTACKS:
        raise ValueError(f"attack={name!r} is not a known attack; choose one of {sorted(ATTACKS)}")
    cls = ATTACKS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"attack {name!r} got unknown option(s) {unknown}; accepted options: {accepted}"
        )
    return cls(**options)


# LiRA and RMIA live in their own module, which adds them to ATTACKS; importing it last lets it
# import this (by then complete) module without a cycle.
from mia import reference_attacks  # noqa: E402, F401
