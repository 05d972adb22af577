"""Decoupled classifiers (Kang, Xie, Rohrbach, Yan, Gordo, Feng & Kalantidis, "Decoupling
Representation and Classifier for Long-Tailed Recognition", ICLR 2020): a second stage that starts
from the model of a finished run (`stage.init_from`), keeps its features and adjusts only the
classifier. conf/stage/ names the class in `_target_`; `none` is the usual single stage.

- `crt`: classifier re-training. The stage-1 features are loaded and frozen (BatchNorm in eval
  mode, keeping stage 1's statistics) and the classifier is trained again from a fresh start,
  with class-balanced sampling in the `decoupled/crt` preset (the paper's cRT).
- `lws`: learnable weight scaling, z_j = f_j (w_j . x + b_j): the stage-1 classifier is kept and
  frozen too, and only the per-class scales f_j are learnt (class-balanced sampling).
- `tau_norm`: τ-normalised classifier, w_j <- w_j / ||w_j||^τ with no training. As in the
  authors' code the normalised weights score by a dot product without the bias. Every τ of
  `stage.taus` is scored on the test split. Kang et al. pick τ on a validation set, and our
  datasets have none, so the best τ on the test split is an optimistic number; every τ's row
  is kept.

Stage 1 is checked before any data is read (`check_stage`), and a stage-2 run records it
(path, config hash, final metrics) in its metrics.json.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from imbalance_bench.checkpoint import config_differences, read_checkpoint, shown_keys
from imbalance_bench.errors import ConfigError, DataError
from imbalance_bench.models import classifier_of
from imbalance_bench.models.heads import ScaledClassifier, replace_classifier

#: keys of stage 1's config that need not equal stage 2's: where the files are
SAME_DATA_EXCEPT = ("dataset.root", "dataset.download")


class JointTraining:
    """stage=none: one stage, features and classifier trained together from scratch."""

    name = "none"
    trains = True  # whether the stage runs the training loop (tau_norm only scores)

    def __init__(self, init_from: str | None = None):
        self.init_from = None if init_from is None else str(Path(str(init_from)).expanduser())

    def prepare(self, model: torch.nn.Module) -> None:
        """Turn a freshly built model into this stage's starting point."""

    def train_mode(self, model: torch.nn.Module) -> None:
        model.train()

    def record(self) -> dict[str, Any] | None:
        """What metrics.json records of stage 1."""
        return None


class DecoupledStage(JointTraining):
    """A second stage from the finished run in `init_from`: its last weights, features frozen."""

    keeps_classifier = True  # load stage 1's classifier too (cRT starts a fresh one)

    def prepare(self, model):
        self.stage1 = stage1_record(Path(self.init_from))  # read now: the run's end does not depend on it
        weights = stage1_weights(Path(self.init_from))
        head = classifier_of(model)
        prefix = next(name for name, module in model.named_modules() if module is head)
        head_keys = {f"{prefix}.{key}" for key in head.state_dict()}
        if not self.keeps_classifier:  # the head stays as build_model made it: a fresh classifier
            weights = {key: value for key, value in weights.items() if key not in head_keys}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [key for key in missing if self.keeps_classifier or key not in head_keys]
        if missing or unexpected:
            raise DataError(f"stage.init_from={self.init_from}: its model does not fit this one "
                            f"(missing {shown_keys(missing) or 'none'}; unexpected {shown_keys(unexpected) or 'none'}); "
                            "use the loss of stage 1, whose head it trained")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.adapt(model)

    def adapt(self, model: torch.nn.Module) -> None:
        """Make trainable what this stage learns."""

    def train_mode(self, model):
        model.eval()  # frozen features: BatchNorm normalises with stage 1's statistics

    def record(self):
        return self.stage1


class ClassifierRetraining(DecoupledStage):
    """cRT (Kang et al. 2020): stage-1 features, a re-initialised classifier trained alone."""

    name = "crt"
    keeps_classifier = False

    def adapt(self, model):
        for parameter in classifier_of(model).parameters():
            parameter.requires_grad_(True)


class LearnableWeightScaling(DecoupledStage):
    """LWS (Kang et al. 2020): the stage-1 classifier, frozen, times a learnt scale per class."""

    name = "lws"

    def adapt(self, model):
        head = classifier_of(model)
        replace_classifier(model, ScaledClassifier(head, head.weight.shape[0]))


class TauNormalization(DecoupledStage):
    """τ-normalised classifier (Kang et al. 2020): w_j / ||w_j||^τ for each τ of `taus`, no training."""

    name = "tau_norm"
    trains = False

    def __init__(self, init_from: str | None = None, taus: Sequence[float] = (1.0,)):
        super().__init__(init_from)
        self.taus = [float(tau) for tau in taus]

    @contextmanager
    def normalized(self, model: torch.nn.Module, tau: float) -> Iterator[None]:
        """The model with its classifier's rows scaled by 1 / ||w_j||^τ and no bias, then as it was."""
        head = classifier_of(model)
        weight = head.weight.detach().clone()
        bias = None if head.bias is None else head.bias.detach().clone()
        with torch.no_grad():
            head.weight.div_(weight.norm(dim=1, keepdim=True).pow(tau))
            if bias is not None:
                head.bias.zero_()
        try:
            yield
        finally:
            with torch.no_grad():
                head.weight.copy_(weight)
                if bias is not None:
                    head.bias.copy_(bias)


def stage1_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of stage 1's last checkpoint (weights-only load: data, never code)."""
    file = path / "checkpoints" / "last.pt"
    checkpoint = read_checkpoint(file, "stage.init_from needs the run directory of a finished run")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise DataError(f"{file}: holds no model weights; stage.init_from needs the run directory of a finished run")
    return checkpoint["model"]


def stage1_record(path: Path) -> dict[str, Any]:
    """What a stage-2 run records of its stage 1: where it is, its config's SHA-256, its method
    (which the report keeps apart: cRT of an ERM run is not cRT of a focal run) and final metrics."""
    metrics = json.loads((path / "metrics.json").read_text())
    config = json.dumps(metrics["config"], sort_keys=True, separators=(",", ":"))
    method = {key: metrics.get(key) for key in ("loss", "reweight", "sampler")}
    return {"path": str(path.resolve()), "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
            "method": method, "final": metrics["final"]}


def check_stage(cfg: DictConfig, label_kind: str) -> None:
    """Before any data is read: a decoupled stage names a finished run of the same data (dataset
    and subset), model and label kind in `stage.init_from`; a single stage names none."""
    stage, init_from = cfg.stage.name, cfg.stage.get("init_from")
    if stage == "none":
        if init_from is not None:
            raise ConfigError(f"stage.init_from={init_from} is not allowed with stage=none: only a decoupled stage "
                              "starts from another run (experiment=decoupled/crt, decoupled/lws or decoupled/tau_norm)")
        return
    if init_from is None:
        raise ConfigError(f"stage.init_from=null is not allowed with stage={stage}: set it to the run directory "
                          "of a finished stage-1 run")
    if stage == "tau_norm" and cfg.loss.get("normalized_classifier"):
        raise ConfigError(f"stage=tau_norm is not allowed with loss={cfg.loss.name} (loss.normalized_classifier=true): "
                          "a cosine classifier normalises its rows at every step, so every tau would score alike")
    path = Path(str(init_from)).expanduser()
    key = f"stage.init_from={init_from}"
    if not path.is_dir():
        raise ConfigError(f"{key} is not allowed: no such directory")
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = None
    if not isinstance(metrics, dict) or metrics.get("status") != "completed" or not isinstance(metrics.get("config"), dict) \
            or not (path / "checkpoints" / "last.pt").is_file():
        raise ConfigError(f"{key} is not allowed: it holds no finished run (metrics.json of a completed run and "
                          "checkpoints/last.pt); finish stage 1 first")
    saved = metrics["config"]
    if (saved.get("stage") or {}).get("name", "none") != "none":
        raise ConfigError(f"{key} is not allowed: it is a stage-2 run itself; name the stage-1 run it started from")
    current = {group: OmegaConf.to_container(cfg[group], resolve=True) for group in ("dataset", "model")}
    differing = [k for k in config_differences({g: saved.get(g) or {} for g in current}, current)
                 if k not in SAME_DATA_EXCEPT]
    if differing:
        raise ConfigError(f"{key} is not allowed: its run has another dataset, subset or model (differs in "
                          f"{shown_keys(differing)}); stage 2 starts from the same data and model")
    if metrics.get("label_kind") != label_kind:
        raise ConfigError(f"{key} is not allowed: its run trained on {metrics.get('label_kind')}-label data, "
                          f"this one is {label_kind}-label")
