"""Generator-based synthesis: a DCGAN-like generator sized from the teacher's input spec and four registered methods.

`dafl` and `rdskd` train the generator once against the teacher alone; every batch afterwards is one forward pass.
`cmi` and `fast` work in rounds: each round fits a batch (CMI: a re-initialized generator and its latents, with a
contrastive term against a memory bank; FastDFKD: a few steps from a meta-learned initialization, which then moves
toward the adapted weights). Every method's state (generator, optimizers, banks, counters) is a `state_dict`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, ClassVar, Optional, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import check, opt
from ..core.errors import DatafreeError
from ..core.seeds import derived_seed
from ..data.augment import augment_batch, resized_crop
from ..models.bn_hooks import BNStatHooks, bn_layers, bn_loss
from ..models.loading import head_of
from ..models.spec import InputSpec
from .base import StepCallback, SynthConfig, Synthesizer, register_synthesizer
from .gen_losses import (
    activation_loss,
    adversarial_loss,
    info_entropy_loss,
    info_nce,
    inter_sample_diversity,
    onehot_loss,
    rdskd_generator_loss,
)

OUTPUTS = ("sigmoid", "bn")


class Generator(nn.Module):
    """latent → linear → (BN, ×2 upsample, conv-BN-LeakyReLU) twice → conv → the model's normalized space, through
    sigmoid pixels in [0, 1] (`sigmoid`) or, as in DAFL's code, tanh and an affine-free BN (`bn`: every batch has the
    per-channel mean 0 and std 1 that normalized data has). Sized from an InputSpec: any (C, H, W), the first feature
    map is ⌈H/4⌉×⌈W/4⌉ and the output is cropped."""

    def __init__(self, spec: InputSpec, latent_dim: int = 256, width: int = 0, output: str = "sigmoid",
                 channels_last: bool = True) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise DatafreeError(f"unknown generator output {output!r}; choose one of {', '.join(OUTPUTS)}")
        c, h, w = (int(v) for v in spec.shape)
        width = width or 32
        self.shape, self.latent_dim = (c, h, w), int(latent_dim)
        self.h0, self.w0 = math.ceil(h / 4), math.ceil(w / 4)
        w2 = 2 * width
        self.fc = nn.Linear(latent_dim, w2 * self.h0 * self.w0)
        bn = lambda ch: nn.BatchNorm2d(ch, track_running_stats=False)  # noqa: E731  (always batch statistics)
        self.body = nn.Sequential(
            bn(w2), nn.Upsample(scale_factor=2),
            nn.Conv2d(w2, w2, 3, padding=1, bias=False), bn(w2), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(w2, width, 3, padding=1, bias=False), bn(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, padding=1),
        )
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))
        self.channels_last = channels_last
        self.out_bn = nn.BatchNorm2d(c, affine=False, track_running_stats=False) if output == "bn" else None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], -1, self.h0, self.w0)
        if self.channels_last and x.device.type == "cpu":  # faster on a CPU: python -m benchmarks.perf_generator
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.body(x)
        x = x[:, :, :self.shape[1], :self.shape[2]]
        if self.out_bn is not None:
            return self.out_bn(torch.tanh(x))
        return (torch.sigmoid(x) - self.mean) / self.std

    def reset_parameters(self) -> None:
        """Fresh initialization of every layer (CMI re-initializes each round)."""
        for m in self.modules():
            if hasattr(m, "reset_parameters") and m is not self:
                m.reset_parameters()


@dataclasses.dataclass
class GeneratorConfig(SynthConfig):
    """Options shared by the generator methods."""

    batch_size: int = 128  # generator batch (and one stored shard)
    iterations: int = opt(200, "generator steps (cmi, fast: per round/batch; dafl, rdskd: in all, before the first "
                               "batch)", cli=True)
    lr: float = opt(1e-3, "generator Adam learning rate", cli=True)
    latent_dim: int = opt(256, "latent size of the generator", cli=True)
    width: int = opt(0, "generator width (channels of its last block; 2x before); 0 = 32 (CPU-sized; MNIST RDSKD "
                        "probe: 16 -> 97.7, 32 -> 98.1 %; the papers use 64, about 4x slower per step)", cli=True)
    output: str = opt("sigmoid", "generator output: sigmoid pixels in [0, 1], or bn (tanh + affine-free BatchNorm, "
                                 "DAFL's: each batch standardized like normalized data; 13 pt worse in an MNIST RDSKD probe)", cli=True, choices=OUTPUTS)
    bf16: bool = opt(False, "run the teacher under bfloat16 autocast (faster on CPUs with AVX512-BF16 or AMX)", cli=True)

    def validate(self) -> None:
        super().validate()
        check(self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}", "iterations")
        check(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}", "lr")
        check(self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}", "latent_dim")
        check(self.width >= 0, f"width must be >= 0 (0 = from the input), got {self.width}", "width")


class GenerativeSynthesizer(Synthesizer):
    """Base of the generator methods: owns the generator and its optimizer; state round-trips through `state_dict`."""

    config_cls: ClassVar[type[SynthConfig]] = GeneratorConfig
    iterative: ClassVar[bool] = True
    fresh_samples: ClassVar[bool] = False  # True: trained once, then each batch is one forward pass (dafl, rdskd)
    cfg: GeneratorConfig  # checked by Synthesizer.__init__ against config_cls

    def __init__(self, teacher: nn.Module, config: SynthConfig, student: Optional[nn.Module] = None) -> None:
        super().__init__(teacher, config, student)
        config.verify()
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.G = Generator(self.spec, cfg.latent_dim, cfg.width, cfg.output).to(self.device)
        self.opt = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        self.steps_done = 0  # generator optimizer steps so far

    # -- shared helpers ---------------------------------------------------------------------------
    def _teacher(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bool(self.cfg.bf16)):
            return self.teacher(x).float()

    def latents(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n standard-normal latents drawn from `gen`."""
        return torch.randn((n, self.G.latent_dim), generator=gen).to(self.device)

    def _check(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise DatafreeError(f"{self.name}: generator loss became {loss.item()} after {self.steps_done} steps; "
                                f"lower --lr (now {self.cfg.lr}) or check the model for NaN weights")

    def work_units(self, n_batches: int) -> int:
        """Generator steps that making `n_batches` batches takes from the current state (for progress bars)."""
        return n_batches * max(1, self.cfg.iterations)

    def state_dict(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "opt": self.opt.state_dict(), "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.opt.load_state_dict(state["opt"])
        self.steps_done = int(state["steps_done"])


class TrainedGenerator(GenerativeSynthesizer):
    """Train the generator against the teacher alone for `iterations` steps, then every batch is G(z), z ~ N(0, I)."""

    fresh_samples = True
    class_conditional = False

    @property
    def trained(self) -> bool:
        return self.steps_done >= self.cfg.iterations

    def work_units(self, n_batches: int) -> int:
        return max(0, self.cfg.iterations - self.steps_done) + n_batches

    def generator_loss(self, z: torch.Tensor, x: torch.Tensor, logits: torch.Tensor,
                       feats: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's generator objective on latents z, their batch x and the teacher's logits / penultimate features."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Called every `epoch_iters` steps (RDSKD refreshes its reference losses)."""

    def _g_step(self, n: int, tap: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """One generator step on n latents (seeded by the step count, so a resumed run repeats it); returns the batch
        and the teacher's logits on it (before the step, detached) and the loss parts."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(derived_seed(cfg.seed, "shard", 17 * self.steps_done + 1))
        z = self.latents(n, g)
        x = self.G(z)
        bn_w = float(getattr(cfg, "bn_weight", 0.0))
        with BNStatHooks(self.teacher) if bn_w > 0 else contextlib.nullcontext() as hooks:
            logits = self._teacher(x)
        loss, parts = self.generator_loss(z, x, logits, tap["f"].float().flatten(1))
        if hooks is not None:
            l_bn = bn_loss(hooks, "l2")[0]
            loss = loss + bn_w * l_bn
            parts = dict(parts, bn=l_bn.item())
        self._check(loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps_done += 1
        if self.steps_done % max(1, getattr(cfg, "epoch_iters", 10 ** 9)) == 0:
            self.end_epoch()
        return x.detach(), logits.detach().float(), parts

    def _tapped(self):
        """A hook that keeps the teacher head's input (the penultimate features) of the last forward."""
        head = dict(self.teacher.named_modules())[head_of(self.teacher)]
        tap: dict[str, torch.Tensor] = {}
        return tap, head.register_forward_pre_hook(lambda m, inp: tap.__setitem__("f", inp[0]))

    def train(self, step: Optional[StepCallback] = None) -> dict[str, float]:
        """Run the remaining generator steps; returns the last loss parts."""
        tap, handle = self._tapped()
        parts: dict[str, float] = {}
        self.G.train()
        try:
            while self.steps_done < self.cfg.iterations:
                _, _, parts = self._g_step(self.cfg.batch_size, tap)
                if step is not None:
                    step(1, parts)
        finally:
            handle.remove()
        return parts

    def joint_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Joint mode: one more generator step on n latents; its batch (and the teacher's logits on it) is the
        student's next batch, so the student sees the generator's whole trajectory."""
        tap, handle = self._tapped()
        self.G.train()
        try:
            return self._g_step(n, tap)
        finally:
            handle.remove()

    @torch.no_grad()
    def generate(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """A fresh batch of n samples (one forward pass)."""
        return self.G(self.latents(n, gen)).detach()

    def make_batch(self, y: torch.Tensor, gen: torch.Generator, step: StepCallback) -> torch.Tensor:
        if not self.trained:
            self.train(step)
        step(1)
        return self.generate(len(y), gen)


@dataclasses.dataclass
class FreshConfig(GeneratorConfig):
    """Options of the methods that train one generator against the teacher (dafl, rdskd)."""

    joint: bool = opt(False, "keep training the generator during distillation, one step per student batch (that "
                             "batch is the student's, as in DAFL's code); --iterations become warm-up steps", cli=True)
    bn_weight: float = opt(1.0, "weight of a BatchNorm-statistics term (DeepInversion's L2 form, as in cmi) added "
                                "to the generator objective: ours, not DAFL's or RDSKD's (0 = the paper's objective); "
                                "MNIST RDSKD seed 0: 0 -> 95.96, 1 -> 97.06 %", cli=True)

    def validate(self) -> None:
        super().validate()
        check(self.bn_weight >= 0 and math.isfinite(self.bn_weight),
              f"bn_weight must be a finite number >= 0, got {self.bn_weight}", "bn_weight")


@dataclasses.dataclass
class DAFLConfig(FreshConfig):
    """DAFL (Chen et al. 2019): L_oh + α·L_a + β·L_ie against the teacher alone."""

    batch_size: int = 256
    iterations: int = 1500
    lr: float = 0.02
    latent_dim: int = 100
    onehot: float = opt(1.0, "weight of the one-hot (authenticity) loss", cli=True)
    activation: float = opt(0.1, "weight α of the activation loss", cli=True)
    entropy: float = opt(5.0, "weight β of the information-entropy (class balance) loss", cli=True)


@register_synthesizer("dafl")
class DAFL(TrainedGenerator):
    """Data-free learning: a generator whose outputs the teacher finds confident, strongly activated and class-balanced."""

    config_cls = DAFLConfig

    def generator_loss(self, z, x, logits, feats):
        cfg = cast(DAFLConfig, self.cfg)
        l_oh, l_a, l_ie = onehot_loss(logits), activation_loss(feats), info_entropy_loss(logits)
        loss = cfg.onehot * l_oh + cfg.activation * l_a + cfg.entropy * l_ie
        return loss, {"oh": l_oh.item(), "a": l_a.item(), "ie": l_ie.item()}


@dataclasses.dataclass
class RDSKDConfig(FreshConfig):
    """RDSKD (Han et al. 2021): exponentially penalized increments of L_oh and L_ie, plus inter-sample diversity."""

    batch_size: int = 256
    iterations: int = 1500
    lr: float = 1e-3
    latent_dim: int = 100
    epoch_iters: int = opt(120, "generator steps per epoch (the reference losses refresh once per epoch)", cli=True)
    diversity: float = opt(0.01, "weight of the inter-sample diversity loss (on latents its scale is ~10x the other "
                                 "terms; 0.1 measured 2 pt worse on MNIST)", cli=True)
    activation: float = opt(0.0, "weight of DAFL's activation loss (0 in RDSKD)", cli=True)

    def validate(self) -> None:
        super().validate()
        check(self.epoch_iters >= 1, f"epoch_iters must be >= 1, got {self.epoch_iters}", "epoch_iters")


@register_synthesizer("rdskd")
class RDSKD(TrainedGenerator):
    """Robust and diverse data-free KD: the generator is penalized for making its losses worse than last epoch."""

    config_cls = RDSKDConfig

    def __init__(self, teacher: nn.Module, config: SynthConfig, student: Optional[nn.Module] = None) -> None:
        super().__init__(teacher, config, student)
        self.prev = [0.0, 0.0]  # L_oh, L_ie at the end of the previous epoch (0 before the first)
        self.last = [0.0, 0.0]

    def generator_loss(self, z, x, logits, feats):
        cfg = cast(RDSKDConfig, self.cfg)
        l_oh, l_ie, l_ds = onehot_loss(logits), info_entropy_loss(logits), inter_sample_diversity(z, logits)
        loss = rdskd_generator_loss(l_oh, l_ie, cfg.diversity * l_ds, self.prev[0], self.prev[1])
        if cfg.activation:
            loss = loss + cfg.activation * activation_loss(feats)
        self.last = [l_oh.item(), l_ie.item()]
        return loss, {"oh": self.last[0], "ie": self.last[1], "ds": l_ds.item()}

    def end_epoch(self) -> None:
        self.prev = list(self.last)

    def state_dict(self) -> dict[str, Any]:
        return dict(super().state_dict(), prev=list(self.prev), last=list(self.last))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prev, self.last = [float(v) for v in state["prev"]], [float(v) for v in state["last"]]


@dataclasses.dataclass
class RoundConfig(GeneratorConfig):
    """Options of the round-based methods (a batch per round, BN + CE + adversarial terms)."""

    bn_weight: float = opt(1.0, "weight of the BN-statistics term (DeepInversion's L2 form)", cli=True)
    ce: float = opt(1.0, "weight of the cross-entropy to the target labels", cli=True)
    adv: float = opt(0.5, "weight of the adversarial term −KL(p_T‖p_S) on samples where teacher and student agree "
                          "(needs a student: distill --method)", cli=True)
    lr_z: float = opt(1e-3, "Adam learning rate of the latents", cli=True)
    keep_best: bool = True  # the round's lowest-loss batch joins the pool, not the last one


@dataclasses.dataclass
class CMIConfig(RoundConfig):
    """CMI (Fang et al. 2021): generator re-initialized each round, contrastive InfoNCE against a memory bank."""

    iterations: int = 200
    batch_size: int = 128
    contrastive: float = opt(0.8, "weight of the contrastive (InfoNCE) term", cli=True)
    cr_temperature: float = opt(0.1, "InfoNCE temperature", cli=True)
    bank_size: int = opt(4096, "memory-bank entries (features of earlier rounds' batches)", cli=True)
    negatives: int = opt(1024, "bank entries sampled as negatives per step", cli=True)
    head_dim: int = 128

    def validate(self) -> None:
        super().validate()
        check(self.cr_temperature > 0, f"cr_temperature must be > 0, got {self.cr_temperature}", "cr_temperature")
        check(self.bank_size >= 0 and self.negatives >= 0, "bank_size and negatives must be >= 0", "bank_size")


@dataclasses.dataclass
class FastConfig(RoundConfig):
    """FastDFKD (Fang et al. 2022): a meta-learned generator initialization, a few steps per batch."""

    iterations: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    lr_z: float = 0.01
    bn_weight: float = 10.0
    ce: float = 0.5
    adv: float = 1.33
    bn_momentum: float = opt(0.9, "the BN term matches a running average of the generated batches' statistics "
                                  "with this momentum (0: this batch only)", cli=True)
    warmup: int = opt(0, "rounds without the adversarial term", cli=True)

    def validate(self) -> None:
        super().validate()
        check(0 <= self.bn_momentum < 1, f"bn_momentum must be in [0, 1), got {self.bn_momentum}", "bn_momentum")


class RoundGenerator(GenerativeSynthesizer):
    """Each batch is one round: `iterations` Adam steps on generator weights and latents against BN + CE (+ adversarial
    with a student); the lowest-loss batch of the round is returned."""

    needs_bn = True
    class_conditional = True

    def __init__(self, teacher: nn.Module, config: SynthConfig, student: Optional[nn.Module] = None) -> None:
        super().__init__(teacher, config, student)
        self.rounds_done = 0

    def round_generator(self) -> nn.Module:
        """The generator this round optimizes (prepared by the method)."""
        return self.G

    def extra_params(self) -> list[nn.Parameter]:
        return []

    def extra_loss(self, x: torch.Tensor, xa: torch.Tensor, hooks: BNStatHooks, gen: torch.Generator,
                   parts: dict[str, float]) -> torch.Tensor:
        return x.new_zeros(())

    def bn_term(self, hooks: BNStatHooks) -> torch.Tensor:
        return bn_loss(hooks, "l2")[0]

    def end_round(self, G: nn.Module, best_feats: Optional[torch.Tensor]) -> None:
        """After a round (meta update, memory bank)."""

    def make_batch(self, y: torch.Tensor, gen: torch.Generator, step: StepCallback) -> torch.Tensor:
        cfg = cast(RoundConfig, self.cfg)
        G = self.round_generator()
        G.train()
        z = self.latents(len(y), gen).requires_grad_(True)
        opt = torch.optim.Adam([{"params": list(G.parameters()) + self.extra_params()},
                                {"params": [z], "lr": cfg.lr_z}], lr=cfg.lr, betas=(0.5, 0.999))
        best, best_loss, best_feats = None, math.inf, None
        use_adv = cfg.adv > 0 and self.student is not None and self.rounds_done >= getattr(cfg, "warmup", 0)
        with BNStatHooks(self.teacher, instance_means=isinstance(self, CMI)) as hooks:
            for _it in range(cfg.iterations):
                x = G(z)
                xa = augment_batch(x, gen)
                t = self._teacher(xa)
                feats = hooks.features() if hooks.instance_means else None
                l_bn, l_ce = self.bn_term(hooks), F.cross_entropy(t, y)
                loss = cfg.bn_weight * l_bn + cfg.ce * l_ce
                parts = {"bn": l_bn.item(), "ce": l_ce.item()}
                if use_adv:
                    assert self.student is not None
                    l_adv = adversarial_loss(self.student(xa), t)
                    loss = loss + cfg.adv * l_adv
                    parts["adv"] = l_adv.item()
                loss = loss + self.extra_loss(x, xa, hooks, gen, parts)
                self._check(loss)
                if not cfg.keep_best or loss.item() < best_loss:
                    best_loss, best = loss.item(), x.detach().clone()
                    best_feats = feats.detach().clone() if feats is not None else None
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.steps_done += 1
                step(1, parts)
        if best is None:  # iterations == 0: the generator's output as it is
            with torch.no_grad():
                best = G(z).detach()
        self.end_round(G, best_feats)
        self.rounds_done += 1
        return best

    def state_dict(self) -> dict[str, Any]:
        return dict(super().state_dict(), rounds_done=self.rounds_done)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rounds_done = int(state["rounds_done"])


@register_synthesizer("cmi")
class CMI(RoundGenerator):
    """Contrastive model inversion: BN + CE + adversarial + InfoNCE between two views of each sample, with negatives
    from a memory bank of earlier rounds; the generator restarts from a fresh initialization every round."""

    config_cls = CMIConfig

    def __init__(self, teacher: nn.Module, config: SynthConfig, student: Optional[nn.Module] = None) -> None:
        super().__init__(teacher, config, student)
        cfg = cast(CMIConfig, self.cfg)
        dim = sum(int(m.num_features) for _, m in bn_layers(teacher))  # the concatenated per-sample BN-input means
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.head = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, cfg.head_dim)).to(self.device)
        self.bank = torch.zeros(0, dim)
        self.bank_pos = 0

    def round_generator(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.cfg.seed, "stream", self.rounds_done))
            self.G.reset_parameters()
        return self.G

    def extra_params(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def extra_loss(self, x, xa, hooks, gen, parts):
        cfg = cast(CMIConfig, self.cfg)
        if cfg.contrastive <= 0:
            return x.new_zeros(())
        f1 = hooks.features()
        self._teacher(resized_crop(x, gen))  # the local view; hooks now hold its features
        f2 = hooks.features()
        q, k = F.normalize(self.head(f1), dim=1), F.normalize(self.head(f2), dim=1)
        neg = None
        if len(self.bank) and cfg.negatives:
            idx = torch.randperm(len(self.bank), generator=gen)[:cfg.negatives]
            neg = F.normalize(self.head(self.bank[idx].to(x.device)), dim=1)
        l_cr = info_nce(q, k, neg, cfg.cr_temperature)
        parts["cr"] = l_cr.item()
        return cfg.contrastive * l_cr

    def end_round(self, G, best_feats):
        cfg = cast(CMIConfig, self.cfg)
        if best_feats is None or cfg.bank_size == 0:
            return
        f = best_feats.cpu()
        if len(self.bank) < cfg.bank_size:
            self.bank = torch.cat([self.bank, f])[:cfg.bank_size]
        else:  # FIFO: overwrite the oldest entries
            for row in f:
                self.bank[self.bank_pos] = row
                self.bank_pos = (self.bank_pos + 1) % cfg.bank_size

    def state_dict(self) -> dict[str, Any]:
        return dict(super().state_dict(), head=self.head.state_dict(), bank=self.bank.clone(), bank_pos=self.bank_pos)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.head.load_state_dict(state["head"])
        self.bank, self.bank_pos = state["bank"].clone(), int(state["bank_pos"])


@register_synthesizer("fast")
class Fast(RoundGenerator):
    """FastDFKD: each round adapts a copy of a shared generator initialization for a few steps; the initialization
    then moves toward the adapted weights (Reptile), so later batches need only those few steps."""

    config_cls = FastConfig

    def __init__(self, teacher: nn.Module, config: SynthConfig, student: Optional[nn.Module] = None) -> None:
        super().__init__(teacher, config, student)
        cfg = cast(FastConfig, self.cfg)
        self.fast = Generator(self.spec, cfg.latent_dim, cfg.width, cfg.output).to(self.device)  # the per-round working copy
        # the meta step moves the initialization by (adapted − init); Adam at lr·iterations as in the paper's code
        self.opt = torch.optim.Adam(self.G.parameters(), lr=cfg.lr * max(1, cfg.iterations), betas=(0.5, 0.999))
        self.mmt: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None  # running BN statistics of generated batches
        self._cur: list[tuple[torch.Tensor, torch.Tensor]] = []

    def round_generator(self) -> nn.Module:
        self.fast.load_state_dict(self.G.state_dict())
        return self.fast

    def bn_term(self, hooks: BNStatHooks) -> torch.Tensor:
        m = cast(FastConfig, self.cfg).bn_momentum
        terms = []
        self._cur = []
        for i, (rm, rv, _eps) in enumerate(hooks.running()):
            mu, var = hooks.means[i], hooks.vars[i]
            if mu is None or var is None:
                continue
            self._cur.append((mu.detach(), var.detach()))
            if self.mmt is not None and m > 0:
                mu = (1 - m) * mu + m * self.mmt[len(self._cur) - 1][0]
                var = (1 - m) * var + m * self.mmt[len(self._cur) - 1][1]
            terms.append(torch.linalg.vector_norm(mu - rm) + torch.linalg.vector_norm(var - rv))
        if not terms:
            raise DatafreeError("no BatchNorm layer was reached in the forward pass; check the model's forward")
        return torch.stack(terms).sum()

    def end_round(self, G, best_feats):
        self.opt.zero_grad(set_to_none=True)
        for p, q in zip(self.G.parameters(), G.parameters()):
            p.grad = (p.detach() - q.detach()).clone()  # Reptile: descend toward the adapted weights
        self.opt.step()
        m = cast(FastConfig, self.cfg).bn_momentum
        if self._cur and m > 0:
            self.mmt = list(self._cur) if self.mmt is None else [
                (m * a + (1 - m) * c, m * b + (1 - m) * d) for (a, b), (c, d) in zip(self.mmt, self._cur)]

    def state_dict(self) -> dict[str, Any]:
        return dict(super().state_dict(), mmt=None if self.mmt is None else [list(t) for t in self.mmt])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mmt = None if state["mmt"] is None else [(a.to(self.device), b.to(self.device)) for a, b in state["mmt"]]
