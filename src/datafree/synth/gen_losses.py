"""Loss terms of the generator-based methods (DAFL, RDSKD, CMI, FastDFKD), each a plain function of tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def onehot_loss(logits: torch.Tensor) -> torch.Tensor:
    """DAFL's L_oh: cross-entropy of the teacher's logits against their own argmax (confident outputs)."""
    return F.cross_entropy(logits, logits.argmax(1))


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """DAFL's L_a: minus the mean absolute activation of the teacher's penultimate features (strong activations)."""
    return -features.abs().mean()


def info_entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """DAFL's L_ie = Σ_k p̄_k log p̄_k = −H(p̄), p̄ the batch-mean softmax (low when classes are balanced)."""
    p = F.softmax(logits.float(), 1).mean(0)
    return (p * torch.log(p.clamp_min(1e-12))).sum()


def inter_sample_diversity(z: torch.Tensor, logits: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """RDSKD's L_ds over the batch's two halves, written as the inverse of a ratio: 1 / (||p₂ − p₁|| / ||z₂ − z₁|| + eps)
    with p the teacher's softmax and z the generator's inputs (Frobenius norms); low when different latents give
    different predictions (mode seeking)."""
    h = z.shape[0] // 2
    p = F.softmax(logits.float(), 1)
    dp = torch.linalg.vector_norm(p[h:2 * h] - p[:h])
    dz = torch.linalg.vector_norm((z[h:2 * h] - z[:h]).float())
    return 1.0 / (dp / dz + eps)


def rdskd_generator_loss(l_oh: torch.Tensor, l_ie: torch.Tensor, l_ds: torch.Tensor, prev_oh: float,
                         prev_ie: float) -> torch.Tensor:
    """RDSKD's L_G = exp(L_oh − L_oh_prev) + exp(L_ie − L_ie_prev) + L_ds: increments of the authenticity and
    class-diversity losses are penalized exponentially (prev values are per-epoch constants)."""
    return torch.exp(l_oh - prev_oh) + torch.exp(l_ie - prev_ie) + l_ds


def adversarial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CMI/FastDFKD's adversarial term: −KL(p_T ‖ p_S) per sample, counted only where teacher and student agree
    (batch mean over all samples)."""
    t, s = teacher_logits.float(), student_logits.float()
    kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="none", log_target=True).sum(1)
    mask = (s.argmax(1) == t.argmax(1)).float()
    return -(kl * mask).mean()


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `q` and of `k` (two views of image i, L2-normalized) are positives; the other
    rows of the other view and `negatives` (bank entries, normalized) are negatives."""
    def one_way(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        keys = b if negatives is None or len(negatives) == 0 else torch.cat([b, negatives])
        logits = a @ keys.t() / temperature
        return F.cross_entropy(logits, torch.arange(len(a), device=a.device))

    return 0.5 * (one_way(q, k) + one_way(k, q))
