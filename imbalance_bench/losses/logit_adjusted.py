"""Logit-adjusted softmax cross-entropy (Menon, Jayasumana, Rawat, Jain, Veit & Kumar, ICLR 2021,
"Long-tail learning via logit adjustment")."""

from __future__ import annotations

from imbalance_bench.losses.balanced_softmax import BalancedSoftmax


class LogitAdjustedLoss(BalancedSoftmax):
    """The logit-adjusted loss of Menon et al. 2021 (Section 5), single-label:
    L = -log softmax(z + tau * log pi)_y, pi_j = n_j / sum_k n_k the train split's class prior.

    Adding tau * log pi to the logits during training only is the loss form of logit adjustment:
    the network's own z then scores classes for a balanced test prior, so evaluation reads z
    unchanged (the post-hoc form instead trains plain CE and scores z - tau * log pi). tau = 1
    (the paper's default) is Balanced Softmax (Ren et al. 2020), whose prior and forward this
    reuses; tau = 0 is plain softmax CE. Class weights, if any, as in the project's softmax CE.
    """

    name = "logit_adjusted"

    def __init__(self, tau: float):
        super().__init__()
        if not tau >= 0:
            raise ValueError(f"tau={tau} must be >= 0")
        self.tau = float(tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
