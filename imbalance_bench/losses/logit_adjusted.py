"""Logit-adjusted softmax cross-entropy (Menon, Jayasumana, Rawat, Jain, Veit & Kumar, ICLR 2021,
"Long-tail learning via logit adjustment")."""

from __future__ import annotations

from imbalance_bench.losses.balanced_softmax import balanced_softmax_loss, log_class_prior
from imbalance_bench.losses.base import ClassificationLoss


class LogitAdjustedLoss(ClassificationLoss):
    """The logit-adjusted loss of Menon et al. 2021 (Section 5), single-label:
    L = -log softmax(z + tau * log pi)_y, pi_j = n_j / sum_k n_k the train split's class prior.

    Adding tau * log pi to the logits during training only is the loss form of logit adjustment:
    the network's own z then scores classes for a balanced test prior, so evaluation reads z
    unchanged (the post-hoc form instead trains plain CE and scores z - tau * log pi). tau = 1
    (the paper's default) is Balanced Softmax (Ren et al. 2020); tau = 0 is plain softmax CE.
    Class weights, if any, as in the project's softmax CE (w_{y_i} per sample, mean over samples).
    """

    name = "logit_adjusted"

    def __init__(self, tau: float):
        super().__init__()
        if not tau >= 0:
            raise ValueError(f"tau={tau} must be >= 0")
        self.tau = float(tau)
        # derived from the class counts, so recomputed by `prepare` rather than checkpointed
        self.register_buffer("log_prior", None, persistent=False)

    def prepare(self, class_counts, num_samples):
        device = None if self.log_prior is None else self.log_prior.device
        self.log_prior = log_class_prior(class_counts).to(device)

    def forward(self, logits, targets, class_weights=None):
        if self.log_prior is None:
            raise RuntimeError("LogitAdjustedLoss.prepare(class_counts, num_samples) must run before forward: "
                               "the prior comes from the train split's class counts")
        if logits.shape[1] != self.log_prior.numel():
            raise ValueError(f"logits have {logits.shape[1]} classes but the prior was prepared for "
                             f"{self.log_prior.numel()}")
        return balanced_softmax_loss(logits, targets, self.tau * self.log_prior, class_weights)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
