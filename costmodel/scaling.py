"""Compute-optimal planning from published scaling laws, with time, energy and cost on hardware.

Two directions:

* **budget -> plan**: a budget (FLOPs, USD, device-hours or days on N devices) becomes a
  training compute C; a law turns C into the compute-optimal parameters N and tokens D and a
  predicted loss; the hardware turns the run into wall-clock time, device-hours, energy and
  cost, plus the cost of serving a million tokens with the resulting model.
* **model -> prediction**: a given model (preset or ``--params``) and token count (or budget)
  gives the predicted loss and the compute, time and cost of training it.

The laws and their constants live in ``data/scaling_laws.yaml`` (each with its source);
users add or replace laws with their own YAML (:func:`load_laws`). Forms:

``parametric``  L = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2), optionally with
                repeated data (Muennighoff et al. 2023), serving compute (Sardana et al. 2024)
                or training precision (Kumar et al. 2024).
``kaplan``      Kaplan et al. 2020 eq. 1.5 and their compute-efficient allocation.
``power``       N_opt = coef * C^a with the coefficient fixed by a published table row.
``vocabulary``  Tao et al. 2024: vocabulary and non-vocabulary parameters vs compute.

Everything here is a pure function of its arguments; the CLI lives in ``cli/scale_cmd.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import energy
from .errors import CostModelError, InputError, from_validation_error
from .specs import AcceleratorSpec, package_data_dir, read_yaml

# ------------------------------------------------------------------------------ constants

# Training FLOPs per parameter per token: 2 forward + 4 backward (Kaplan et al. 2020 sec. 2.1,
# C ~ 6NBS; Hoffmann et al. 2022 sec. 3.3 and appendix F use the same C = 6ND).
TRAIN_FLOPS_PER_PARAM_TOKEN = 6.0
# Serving FLOPs per parameter per token: forward pass only (Kaplan et al. 2020 Table 1,
# C_forward ~ 2N; Sardana et al. 2024 sec. 2 inference cost 2 N D_inf).
SERVE_FLOPS_PER_PARAM_TOKEN = 2.0
# One petaflop/s-day, Kaplan et al. 2020 sec. 1.3 (unit of C_min): 1e15 * 86400.
PF_DAY_FLOPS = 8.64e19

# Fallback model FLOPs utilisation when costmodel.training is not available: Llama 3 405B
# pretraining reached 38-43% BF16 MFU on 8K-16K H100s (Dubey et al. 2024, "The Llama 3 Herd
# of Models", arXiv:2407.21783, Table 4); 0.40 is inside that range.
DEFAULT_MFU = 0.40
DEFAULT_MFU_SOURCE = "default MFU 0.40 (Llama 3 405B: 38-43% BF16 MFU on H100, Dubey et al. 2024 Table 4)"

# Energy: one model and one set of defaults for `train` and `scale` (costmodel/energy.py: TDP x
# power fraction 1.0 x PUE 1.58, with their sources).
DEFAULT_PUE = energy.DEFAULT_PUE
DEFAULT_POWER_FRACTION = energy.DEFAULT_POWER_FRACTION

# Serving utilisation. Decode reads every weight once per step and does 2 FLOPs per weight per
# sequence in the batch, so with weights of b bytes the arithmetic intensity is 2*batch/b FLOP
# per byte; utilisation <= intensity / (peak / bandwidth) (roofline, KV-cache traffic ignored,
# so this is an upper bound). Capped at 76%, the large-batch prefill MFU of PaLM 540B on TPU v4
# (Pope et al. 2022, "Efficiently Scaling Transformer Inference", MLSys 2023, abstract).
SERVING_MFU_CAP = 0.76
# Decode batch (sequences in flight) for the default serving utilisation: an assumption of this
# tool, not a published figure. Pass --serving-batch or --serving-mfu.
DEFAULT_SERVING_BATCH = 64

DTYPE_BITS = {"fp64": 64, "fp32": 32, "tf32": 19, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4, "fp4": 4}

# Tao et al. 2024 width table (sail-sg/scaling-with-vocab utils.py Nnv_to_d): model width d
# used for a given non-vocabulary parameter count, upper bounds inclusive.
_TAO_WIDTHS = ((50e6, 512), (200e6, 768), (500e6, 1024), (1e9, 1536), (2e9, 2048), (5e9, 3200),
               (10e9, 4096), (20e9, 5120), (50e9, 6048), (100e9, 8192), (200e9, 12288),
               (500e9, 16384), (1000e9, 20480))


# ------------------------------------------------------------------------------ law schema

class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParametricParams(_M):
    """L = E + A / N^alpha + B / D^beta. E, A, B may be given directly or as natural logs."""

    E: float | None = Field(default=None, ge=0)
    A: float | None = Field(default=None, gt=0)
    B: float | None = Field(default=None, gt=0)
    ln_E: float | None = None
    ln_A: float | None = None
    ln_B: float | None = None
    alpha: float = Field(gt=0, lt=3)
    beta: float = Field(gt=0, lt=3)

    @model_validator(mode="after")
    def _one_of_each(self):
        for k in ("E", "A", "B"):
            direct, log = getattr(self, k), getattr(self, "ln_" + k)
            if (direct is None) == (log is None):
                raise ValueError(f"give exactly one of '{k}' and 'ln_{k}'")
        return self

    @property
    def e(self) -> float:
        return self.E if self.E is not None else math.exp(self.ln_E)

    @property
    def a_coef(self) -> float:
        return self.A if self.A is not None else math.exp(self.ln_A)

    @property
    def b_coef(self) -> float:
        return self.B if self.B is not None else math.exp(self.ln_B)

    @property
    def g(self) -> float:
        """Hoffmann et al. 2022 eq. 4: G = (alpha A / (beta B))^(1 / (alpha + beta))."""
        return (self.alpha * self.a_coef / (self.beta * self.b_coef)) ** (1.0 / (self.alpha + self.beta))

    @property
    def a_exponent(self) -> float:
        """N_opt ~ C^a with a = beta / (alpha + beta) (Hoffmann et al. 2022 eq. 4)."""
        return self.beta / (self.alpha + self.beta)


class KaplanParams(_M):
    n_c: float = Field(gt=0)
    d_c: float = Field(gt=0)
    alpha_n: float = Field(gt=0, lt=1)
    alpha_d: float = Field(gt=0, lt=1)
    opt_coef_params: float = Field(gt=0)
    opt_exponent: float = Field(gt=0, lt=1)
    pf_day_flops: float = Field(default=PF_DAY_FLOPS, gt=0)
    b_star_tokens: float | None = Field(default=None, gt=0)
    alpha_b: float | None = Field(default=None, gt=0)


class PowerParams(_M):
    a: float = Field(gt=0, lt=1)
    anchor_params: float = Field(gt=0)
    anchor_flops: float = Field(gt=0)
    loss_law: str

    @property
    def coef(self) -> float:
        return self.anchor_params / self.anchor_flops ** self.a


class VocabParams(_M):
    nnv_log_coef: float
    nnv_exp: float = Field(gt=0, lt=1)
    nv_log_coef: float
    nv_exp: float = Field(gt=0, lt=1)
    derivative_nv_base: float = Field(gt=0)
    derivative_nnv_base: float = Field(gt=0)
    derivative_exp: float = Field(gt=0, lt=2)
    loss_law: str


class DataConstrained(_M):
    r_d_star: float = Field(gt=0)
    r_n_star: float = Field(gt=0)


class PrecisionParams(_M):
    gamma_w: float = Field(gt=0)
    gamma_a: float = Field(gt=0)
    gamma_kv: float = Field(gt=0)


class Law(_M):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    name: str
    form: Literal["parametric", "kaplan", "power", "vocabulary"]
    source: str = Field(min_length=10)
    notes: str = ""
    param_convention: Literal["total", "non_embedding", "no_input_embedding"] = "total"
    parametric: ParametricParams | None = None
    kaplan: KaplanParams | None = None
    power: PowerParams | None = None
    vocabulary: VocabParams | None = None
    data_constrained: DataConstrained | None = None
    inference: bool = False
    precision: PrecisionParams | None = None

    @model_validator(mode="after")
    def _sections(self):
        if getattr(self, self.form) is None:
            raise ValueError(f"form '{self.form}' needs a '{self.form}' section")
        for other in ("parametric", "kaplan", "power", "vocabulary"):
            if other != self.form and getattr(self, other) is not None:
                raise ValueError(f"'{other}' section given but form is '{self.form}'")
        if self.form != "parametric" and (self.data_constrained or self.inference or self.precision):
            raise ValueError("data_constrained, inference and precision apply to form 'parametric' only")
        return self

    @property
    def loss_law_id(self) -> str | None:
        sec = self.power or self.vocabulary
        return sec.loss_law if sec else None


class LawFile(_M):
    laws: list[Law] = Field(min_length=1)


def laws_file() -> Path:
    return package_data_dir("data") / "scaling_laws.yaml"


def _parse_law_file(path: Path) -> list[Law]:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError("expected a mapping with a 'laws' list at the top level", file=path)
    try:
        parsed = LawFile.model_validate(data)
    except ValidationError as exc:
        err = from_validation_error(exc, path)
        # Name the law by id, not only by list index: "laws.3.parametric.A" -> "laws[ours].parametric.A".
        if err.field and err.field.startswith("laws."):
            parts = err.field.split(".")
            try:
                idx = int(parts[1])
                lid = data["laws"][idx].get("id") if isinstance(data["laws"][idx], dict) else None
            except (ValueError, IndexError, KeyError, TypeError, AttributeError):
                lid = None
            if lid:
                err = InputError(err.detail, file=path, field=".".join([f"laws[{lid}]"] + parts[2:]))
        raise err from None
    ids = [law.id for law in parsed.laws]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"law id(s) defined twice: {', '.join(dup)}", file=path, field="laws")
    return parsed.laws


def load_laws(extra_files: list[str | Path] | None = None) -> dict[str, Law]:
    """Shipped laws, then each extra file in order (a law with an existing id replaces it)."""
    laws: dict[str, Law] = {}
    origin: dict[str, Path] = {}
    for path in [laws_file()] + [Path(p) for p in (extra_files or [])]:
        for law in _parse_law_file(path):
            laws[law.id] = law
            origin[law.id] = path
    for law in laws.values():
        ref = law.loss_law_id
        if ref is not None:
            target = laws.get(ref)
            if target is None or target.form not in ("parametric", "kaplan"):
                raise InputError(f"loss_law {ref!r} is not a known parametric or kaplan law",
                                 file=origin[law.id], field=f"laws[{law.id}].{law.form}.loss_law")
    return laws


def get_law(laws: dict[str, Law], law_id: str) -> Law:
    try:
        return laws[law_id]
    except KeyError:
        raise InputError(f"unknown law {law_id!r}; known: {', '.join(sorted(laws))}, all", field="law") from None


# ------------------------------------------------------------------------------ conditions

@dataclass(frozen=True)
class Conditions:
    """What a law may need beyond N and D.

    unique_tokens: unique tokens available (Muennighoff); None means every token is fresh.
    served_tokens: lifetime served tokens (Sardana); serving FLOPs 2 N per token.
    serve_weight: training-equivalent FLOPs per serving FLOP (training throughput divided by
        serving throughput on the hardware); 1.0 compares raw FLOPs (Sardana section 2).
    bits_w / bits_a / bits_kv: training precision of weights, activations, KV cache (Kumar).
    """

    unique_tokens: float | None = None
    served_tokens: float = 0.0
    serve_weight: float = 1.0
    bits_w: float = 16.0
    bits_a: float = 16.0
    bits_kv: float = 16.0


NO_CONDITIONS = Conditions()


def precision_factor(p: PrecisionParams, cond: Conditions) -> float:
    """Kumar et al. 2024 eq. 4: N_eff / N = prod_x (1 - exp(-P_x / gamma_x))."""
    return ((1 - math.exp(-cond.bits_w / p.gamma_w)) * (1 - math.exp(-cond.bits_a / p.gamma_a))
            * (1 - math.exp(-cond.bits_kv / p.gamma_kv)))


# ------------------------------------------------------------------------------ loss

def _parametric_loss(law: Law, n, d, cond: Conditions):
    p = law.parametric
    n = np.asarray(n, dtype=float)
    d = np.asarray(d, dtype=float)
    n_eff = n * (precision_factor(law.precision, cond) if law.precision else 1.0)
    if law.data_constrained and cond.unique_tokens:
        dc = law.data_constrained
        u = float(cond.unique_tokens)
        u_d = np.minimum(d, u)
        r_d = np.maximum(d / u_d - 1.0, 0.0)
        d_eff = u_d + u_d * dc.r_d_star * (1.0 - np.exp(-r_d / dc.r_d_star))
        # Parameters beyond the compute-optimal size for U unique tokens are worth less
        # (Muennighoff et al. 2023 eq. 5; datablations README scaling_law()).
        n_for_u = (u * p.g) ** (p.beta / p.alpha) * p.g
        u_n = np.minimum(n_eff, n_for_u)
        r_n = np.maximum(n_eff / u_n - 1.0, 0.0)
        n_eff = u_n + u_n * dc.r_n_star * (1.0 - np.exp(-r_n / dc.r_n_star))
    else:
        d_eff = d
    return p.e + p.a_coef / n_eff ** p.alpha + p.b_coef / d_eff ** p.beta


def _kaplan_loss(law: Law, n, d):
    k = law.kaplan
    n = np.asarray(n, dtype=float)
    d = np.asarray(d, dtype=float)
    return ((k.n_c / n) ** (k.alpha_n / k.alpha_d) + k.d_c / d) ** k.alpha_d


def predict_loss(law: Law, laws: dict[str, Law], n, d, cond: Conditions = NO_CONDITIONS):
    """Predicted loss of a model with n parameters (law's convention) trained on d tokens."""
    if law.form == "parametric":
        out = _parametric_loss(law, n, d, cond)
    elif law.form == "kaplan":
        out = _kaplan_loss(law, n, d)
    else:
        base = get_law(laws, law.loss_law_id)
        return predict_loss(base, laws, n, d, cond)
    return float(out) if np.ndim(out) == 0 else out


def kaplan_critical_batch_tokens(law: Law, loss: float) -> float | None:
    """Kaplan et al. 2020 eq. 1.4: B_crit(L) = B_* / L^(1/alpha_B) (tokens); loss in Kaplan's units."""
    k = law.kaplan
    if k is None or k.b_star_tokens is None or k.alpha_b is None or not loss > 0:
        return None
    return k.b_star_tokens / loss ** (1.0 / k.alpha_b)


# ------------------------------------------------------------------------------ allocation

@dataclass
class Allocation:
    law_id: str
    params: float
    tokens: float
    train_flops: float
    loss: float
    serving_flops: float = 0.0  # lifetime serving FLOPs included in the budget (Sardana)
    extras: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


def _argmin_log(f: Callable[[np.ndarray], np.ndarray], lo: float, hi: float) -> float:
    """Minimise f over [lo, hi] in log space: a dense grid, then golden-section refinement."""
    xs = np.logspace(math.log10(lo), math.log10(hi), 801)
    ys = np.asarray(f(xs), dtype=float)
    ys = np.where(np.isfinite(ys), ys, np.inf)
    i = int(np.argmin(ys))
    a = math.log(xs[max(i - 1, 0)])
    b = math.log(xs[min(i + 1, len(xs) - 1)])
    phi = (math.sqrt(5) - 1) / 2
    c, d = b - phi * (b - a), a + phi * (b - a)
    fc, fd = float(f(np.array([math.exp(c)]))[0]), float(f(np.array([math.exp(d)]))[0])
    for _ in range(80):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - phi * (b - a)
            fc = float(f(np.array([math.exp(c)]))[0])
        else:
            a, c, fc = c, d, fd
            d = a + phi * (b - a)
            fd = float(f(np.array([math.exp(d)]))[0])
    x = math.exp((a + b) / 2)
    return x if float(f(np.array([x]))[0]) <= ys[i] else float(xs[i])


def _check_budget(flops: float):
    if not (isinstance(flops, (int, float)) and math.isfinite(flops) and flops > 0):
        raise InputError(f"compute budget must be a positive number of FLOPs, got {flops!r}", field="budget")


def compute_optimal(law: Law, laws: dict[str, Law], flops: float, cond: Conditions = NO_CONDITIONS) -> Allocation:
    """Compute-optimal parameters and tokens for a budget of ``flops`` under ``law``.

    For ``inference`` laws with served tokens, ``flops`` pays for training plus serving:
    6 N D + serve_weight * 2 N D_inf = flops.
    """
    _check_budget(flops)
    c = float(flops)
    k6 = TRAIN_FLOPS_PER_PARAM_TOKEN
    notes: list[str] = []
    extras: dict = {}
    if law.form == "kaplan":
        kp = law.kaplan
        n = kp.opt_coef_params * (c / kp.pf_day_flops) ** kp.opt_exponent
        d = c / (k6 * n)
        loss = float(_kaplan_loss(law, n, d))
        b_crit = kaplan_critical_batch_tokens(law, loss)
        if b_crit:
            extras["critical_batch_tokens"] = b_crit
        return Allocation(law.id, n, d, c, loss, extras=extras, notes=notes)
    if law.form == "power":
        pp = law.power
        n = pp.coef * c ** pp.a
        d = c / (k6 * n)
        return Allocation(law.id, n, d, c, predict_loss(law, laws, n, d, cond), extras=extras, notes=notes)
    if law.form == "vocabulary":
        vp = law.vocabulary
        n_nv = math.exp(vp.nnv_log_coef) * c ** vp.nnv_exp
        n_v = math.exp(vp.nv_log_coef) * c ** vp.nv_exp
        n = n_nv + n_v
        d = c / (k6 * n)
        width = tao_width(n_nv)
        extras.update(non_vocab_params=n_nv, vocab_params=n_v, width=width, vocab_size=n_v / width)
        return Allocation(law.id, n, d, c, predict_loss(law, laws, n, d, cond), extras=extras, notes=notes)

    p = law.parametric
    serving = law.inference and cond.served_tokens > 0
    repeated = law.data_constrained is not None and cond.unique_tokens
    if law.precision:
        extras["precision_factor"] = precision_factor(law.precision, cond)
        extras["bits"] = {"weights": cond.bits_w, "activations": cond.bits_a, "kv_cache": cond.bits_kv}
    if not serving and not repeated:
        # Closed form (Hoffmann et al. 2022 eq. 4). With a precision factor f, A -> A f^-alpha.
        a_eff = p.a_coef * (extras.get("precision_factor", 1.0) ** -p.alpha)
        g = (p.alpha * a_eff / (p.beta * p.b_coef)) ** (1.0 / (p.alpha + p.beta))
        n = g * (c / k6) ** p.a_exponent
        d = c / (k6 * n)
        return Allocation(law.id, n, d, c, predict_loss(law, laws, n, d, cond), extras=extras, notes=notes)

    lo = 1e3
    if serving:
        per_param_serve = SERVE_FLOPS_PER_PARAM_TOKEN * cond.served_tokens * cond.serve_weight
        hi = c / per_param_serve * (1 - 1e-6)
        if hi <= lo * 10:
            raise InputError(f"a budget of {c:.3g} FLOPs cannot serve {cond.served_tokens:.3g} tokens with any "
                             "useful model; raise the budget or lower --served-tokens", field="served_tokens")

        def d_of(nv):
            return (c - per_param_serve * nv) / (k6 * nv)
    else:
        hi = c / (k6 * 1e3)

        def d_of(nv):
            return c / (k6 * nv)

    def f(nv):
        dv = d_of(nv)
        with np.errstate(all="ignore"):
            out = np.where(dv > 0, _parametric_loss(law, nv, np.maximum(dv, 1.0), cond), np.inf)
        return out

    n = _argmin_log(f, lo, hi)
    d = d_of(n)
    train = k6 * n * d
    alloc = Allocation(law.id, n, d, train, predict_loss(law, laws, n, d, cond), extras=extras, notes=notes)
    if serving:
        alloc.serving_flops = SERVE_FLOPS_PER_PARAM_TOKEN * n * cond.served_tokens
        alloc.extras["served_tokens"] = cond.served_tokens
        alloc.extras["serve_weight"] = cond.serve_weight
    if repeated:
        alloc.extras["unique_tokens"] = cond.unique_tokens
        alloc.extras["epochs"] = d / cond.unique_tokens
    return alloc


def tao_width(non_vocab_params: float) -> float:
    for bound, width in _TAO_WIDTHS:
        if non_vocab_params <= bound:
            return float(width)
    return 24576.0


def tao_optimal_vocab(law: Law, non_vocab_params: float, width: float | None = None) -> dict:
    """Tao et al. 2024 approach 2: N_v = N_v0 (N_nv / N_nv0)^gamma; vocabulary V = N_v / d."""
    vp = law.vocabulary
    if vp is None:
        raise InputError(f"law {law.id!r} has no vocabulary section", field="law")
    n_v = vp.derivative_nv_base * (non_vocab_params / vp.derivative_nnv_base) ** vp.derivative_exp
    d = width or tao_width(non_vocab_params)
    return {"vocab_params": n_v, "width": d, "vocab_size": n_v / d}


def sardana_min_total_flops(law: Law, target_loss: float, served_tokens: float) -> Allocation:
    """Sardana et al. 2024 sec. 2: minimise 6 N D_tr + 2 N D_inf subject to L(N, D_tr) = target_loss."""
    p = law.parametric
    if p is None:
        raise InputError(f"law {law.id!r} is not parametric", field="law")
    if target_loss <= p.e:
        raise InputError(f"target loss {target_loss} is at or below the irreducible loss E = {p.e:.4g}", field="loss")
    # Smallest N that can reach the loss at all: A / N^alpha < L - E.
    n_min = (p.a_coef / (target_loss - p.e)) ** (1.0 / p.alpha)

    def d_of(nv):
        with np.errstate(all="ignore"):
            room = target_loss - p.e - p.a_coef / nv ** p.alpha
            return np.where(room > 0, (p.b_coef / np.maximum(room, 1e-300)) ** (1.0 / p.beta), np.inf)

    def total(nv):
        return TRAIN_FLOPS_PER_PARAM_TOKEN * nv * d_of(nv) + SERVE_FLOPS_PER_PARAM_TOKEN * nv * served_tokens

    n = _argmin_log(total, n_min * (1 + 1e-9), n_min * 1e6)
    d = float(d_of(np.array([n]))[0])
    train = TRAIN_FLOPS_PER_PARAM_TOKEN * n * d
    return Allocation(law.id, n, d, train, target_loss, serving_flops=SERVE_FLOPS_PER_PARAM_TOKEN * n * served_tokens)


# ------------------------------------------------------------------------------ models

def law_param_count(law: Law, model) -> float:
    """Parameters of a ModelConfig in the convention the law was fitted with (active for MoE)."""
    b = model.param_breakdown()
    embed = b["embedding"] + b["position_embedding"]
    head = b["lm_head"] if b["lm_head"] else model.vocab * model.hidden  # tied: the matrix still runs
    non_embedding = model.active_params - embed - b["lm_head"]
    if law.param_convention == "non_embedding":
        return float(non_embedding)
    if law.param_convention == "no_input_embedding":
        return float(non_embedding + head)
    return float(model.active_params)


def training_flops_per_token(model, seq_len: int | None = None) -> float:
    """Model FLOPs per trained token from the architecture (PaLM, Chowdhery et al. 2022 appendix B):
    6 N_matmul + 12 L H Q T, where N_matmul counts every matrix a token multiplies through (active
    parameters without the input embedding lookup, with the output head) and the second term is
    attention scores and values over a context of T tokens (no causal saving counted)."""
    t = seq_len or model.max_context
    b = model.param_breakdown()
    n_matmul = model.active_params - b["embedding"] - b["position_embedding"] - b["lm_head"] + model.vocab * model.hidden
    if model.mla is not None:
        qk = model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim
        attn = 6.0 * model.layers * model.heads * (qk + model.mla.v_head_dim) * t
    else:
        attn = 12.0 * model.layers * model.heads * model.d_head * t
    return TRAIN_FLOPS_PER_PARAM_TOKEN * n_matmul + attn


# ------------------------------------------------------------------------------ hardware

@dataclass(frozen=True)
class Throughput:
    flops_per_device: float
    mfu: float
    source: str
    peak_flops: float
    dtype: str


def achieved_flops_per_device(model, spec: AcceleratorSpec, devices: int, dtype: str = "bf16",
                              mfu: float | None = None) -> Throughput:
    """Sustained training FLOP/s per device.

    Uses ``costmodel.training.estimate_mfu(model, spec, devices)`` when that module exists and
    accepts the call; otherwise :data:`DEFAULT_MFU`. ``Throughput.source`` says which.
    """
    peak = spec.peak(dtype)
    if mfu is not None:
        if not 0 < mfu <= 1:
            raise InputError(f"MFU must be in (0, 1], got {mfu}", field="mfu")
        return Throughput(peak * mfu, mfu, "given (--mfu)", peak, dtype)
    try:
        from costmodel.training import estimate_mfu  # written by another module; may not exist yet
    except ImportError:
        return Throughput(peak * DEFAULT_MFU, DEFAULT_MFU, DEFAULT_MFU_SOURCE + "; costmodel.training not available",
                          peak, dtype)
    if model is None:
        return Throughput(peak * DEFAULT_MFU, DEFAULT_MFU, DEFAULT_MFU_SOURCE + "; no architecture to estimate MFU for",
                          peak, dtype)
    try:
        est = estimate_mfu(model, spec, devices)
        value = float(getattr(est, "mfu", est))
    except Exception as exc:  # noqa: BLE001 - an optional estimator; say why it was not used
        if not isinstance(exc, (TypeError, ValueError, AttributeError, ArithmeticError, LookupError, CostModelError)):
            raise
        return Throughput(peak * DEFAULT_MFU, DEFAULT_MFU,
                          DEFAULT_MFU_SOURCE + f"; costmodel.training.estimate_mfu failed: {exc}", peak, dtype)
    if not 0 < value <= 1:
        return Throughput(peak * DEFAULT_MFU, DEFAULT_MFU,
                          DEFAULT_MFU_SOURCE + f"; estimate_mfu returned {value!r}", peak, dtype)
    return Throughput(peak * value, value, "costmodel.training.estimate_mfu", peak, dtype)


def serving_utilisation(spec: AcceleratorSpec, dtype: str = "bf16", batch: int = DEFAULT_SERVING_BATCH,
                        mfu: float | None = None) -> tuple[float, str]:
    """Utilisation of the peak while decoding (see SERVING_MFU_CAP); returns (value, how)."""
    if mfu is not None:
        if not 0 < mfu <= 1:
            raise InputError(f"serving MFU must be in (0, 1], got {mfu}", field="serving_mfu")
        return mfu, "given (--serving-mfu)"
    if batch < 1:
        raise InputError("serving batch must be at least 1", field="serving_batch")
    bytes_per_param = DTYPE_BITS.get(dtype, 16) / 8
    ridge = spec.peak(dtype) / spec.memory.bandwidth_bytes_per_s
    intensity = SERVE_FLOPS_PER_PARAM_TOKEN * batch / bytes_per_param
    util = min(SERVING_MFU_CAP, intensity / ridge)
    return util, (f"decode roofline at batch {batch}, {dtype} weights ({intensity:.0f} FLOP/B vs ridge "
                  f"{ridge:.0f} FLOP/B), capped at {SERVING_MFU_CAP:.0%}; KV-cache traffic ignored (upper bound)")


@dataclass(frozen=True)
class Hardware:
    spec: AcceleratorSpec
    devices: int
    throughput: Throughput
    price_per_device_hour: float | None
    price_source: str
    pue: float = DEFAULT_PUE
    power_fraction: float = DEFAULT_POWER_FRACTION
    serving_util: float = 0.0
    serving_util_source: str = ""

    @property
    def cluster_flops(self) -> float:
        return self.throughput.flops_per_device * self.devices

    @property
    def serving_flops_per_device(self) -> float:
        return self.throughput.peak_flops * self.serving_util

    @property
    def serve_weight(self) -> float:
        """Training-equivalent FLOPs per serving FLOP: training rate / serving rate per device."""
        return self.throughput.flops_per_device / self.serving_flops_per_device if self.serving_util else 1.0


def make_hardware(spec: AcceleratorSpec, devices: int, *, model=None, dtype: str = "bf16", mfu: float | None = None,
                  price_per_hour: float | None = None, pue: float = DEFAULT_PUE,
                  power_fraction: float = DEFAULT_POWER_FRACTION, serving_batch: int = DEFAULT_SERVING_BATCH,
                  serving_mfu: float | None = None) -> Hardware:
    if devices < 1:
        raise InputError("devices must be at least 1", field="devices")
    energy.check_energy_inputs(pue, power_fraction)
    if price_per_hour is not None and not price_per_hour > 0:
        raise InputError("price per device-hour must be positive", field="price_per_hour")
    thr = achieved_flops_per_device(model, spec, devices, dtype, mfu)
    util, how = serving_utilisation(spec, dtype, serving_batch, serving_mfu)
    if price_per_hour is not None:
        price, psrc = price_per_hour, "--price-per-hour"
    elif spec.price_per_hour_usd is not None:
        price, psrc = spec.price_per_hour_usd, f"{spec.id} spec price_per_hour_usd ({spec.sources.get('price_per_hour_usd', 'spec')})"
    else:
        price, psrc = None, "no price in the spec; pass --price-per-hour"
    return Hardware(spec, devices, thr, price, psrc, pue, power_fraction, util, how)


# ------------------------------------------------------------------------------ budgets

BudgetKind = Literal["flops", "usd", "device_hours", "days"]


@dataclass(frozen=True)
class Budget:
    kind: BudgetKind
    value: float

    def __post_init__(self):
        if not (math.isfinite(self.value) and self.value > 0):
            raise InputError(f"budget must be a positive number, got {self.value!r}", field=f"budget_{self.kind}")


def budget_to_flops(budget: Budget, hw: Hardware | None) -> float:
    """Training-equivalent FLOPs a budget buys on the hardware at its achieved throughput."""
    if budget.kind == "flops":
        return budget.value
    if hw is None:
        raise InputError(f"a {budget.kind} budget needs --hardware", field="hardware")
    rate = hw.throughput.flops_per_device
    if budget.kind == "device_hours":
        return budget.value * 3600.0 * rate
    if budget.kind == "days":
        return budget.value * 86400.0 * hw.devices * rate
    if hw.price_per_device_hour is None:
        raise InputError(f"{hw.spec.id} has no price_per_hour_usd; pass --price-per-hour", field="price_per_hour")
    return budget.value / hw.price_per_device_hour * 3600.0 * rate


# ------------------------------------------------------------------------------ plans

@dataclass
class Plan:
    law_id: str
    law_name: str
    source: str
    allocation: Allocation
    hardware: Hardware | None
    budget_flops: float | None = None
    notes: list[str] = field(default_factory=list)

    # ---- derived run figures
    @property
    def train_time_s(self) -> float | None:
        return self.allocation.train_flops / self.hardware.cluster_flops if self.hardware else None

    @property
    def device_hours(self) -> float | None:
        return self.train_time_s * self.hardware.devices / 3600.0 if self.hardware else None

    @property
    def energy_kwh(self) -> float | None:
        """TDP x power fraction x devices x time x PUE."""
        if not self.hardware:
            return None
        hw = self.hardware
        return energy.energy_kwh(hw.spec.tdp_w, hw.devices, self.train_time_s, hw.pue, hw.power_fraction)

    @property
    def cost_usd(self) -> float | None:
        if not self.hardware or self.hardware.price_per_device_hour is None:
            return None
        return self.device_hours * self.hardware.price_per_device_hour

    @property
    def serve_tokens_per_device_s(self) -> float | None:
        if not self.hardware or not self.hardware.serving_util:
            return None
        return self.hardware.serving_flops_per_device / (SERVE_FLOPS_PER_PARAM_TOKEN * self.allocation.params)

    @property
    def cost_per_million_served_usd(self) -> float | None:
        tps = self.serve_tokens_per_device_s
        if tps is None or self.hardware.price_per_device_hour is None:
            return None
        return self.hardware.price_per_device_hour / 3600.0 / tps * 1e6

    @property
    def serving_cost_usd(self) -> float | None:
        """Cost of the lifetime served tokens included in the budget (inference-aware laws)."""
        if not self.allocation.serving_flops:
            return None
        per_m = self.cost_per_million_served_usd
        served = self.allocation.extras.get("served_tokens")
        return per_m * served / 1e6 if per_m is not None and served else None

    def to_dict(self) -> dict:
        a = self.allocation
        d = {
            "law": self.law_id,
            "law_name": self.law_name,
            "source": self.source,
            "params": a.params,
            "tokens": a.tokens,
            "tokens_per_param": a.tokens_per_param,
            "train_flops": a.train_flops,
            "predicted_loss": a.loss,
            "budget_flops": self.budget_flops,
            "serving_flops_in_budget": a.serving_flops or None,
            "extras": a.extras,
            "notes": a.notes + self.notes,
        }
        if self.hardware:
            hw = self.hardware
            d["hardware"] = {
                "device": hw.spec.id,
                "devices": hw.devices,
                "dtype": hw.throughput.dtype,
                "peak_flops_per_device": hw.throughput.peak_flops,
                "mfu": hw.throughput.mfu,
                "mfu_source": hw.throughput.source,
                "achieved_flops_per_device": hw.throughput.flops_per_device,
                "price_per_device_hour_usd": hw.price_per_device_hour,
                "price_source": hw.price_source,
                "tdp_w": hw.spec.tdp_w,
                "power_fraction": hw.power_fraction,
                "pue": hw.pue,
                "serving_utilisation": hw.serving_util,
                "serving_utilisation_source": hw.serving_util_source,
            }
            d.update({
                "train_time_s": self.train_time_s,
                "train_time_days": self.train_time_s / 86400.0,
                "device_hours": self.device_hours,
                "energy_kwh": self.energy_kwh,
                "cost_usd": self.cost_usd,
                "serving_cost_usd": self.serving_cost_usd,
                "serve_tokens_per_device_s": self.serve_tokens_per_device_s,
                "cost_per_million_served_tokens_usd": self.cost_per_million_served_usd,
            })
        return d


def plan_from_budget(law: Law, laws: dict[str, Law], budget: Budget, hw: Hardware | None,
                     cond: Conditions = NO_CONDITIONS) -> Plan:
    flops = budget_to_flops(budget, hw)
    if law.inference and cond.served_tokens > 0 and hw is not None:
        cond = Conditions(cond.unique_tokens, cond.served_tokens, hw.serve_weight, cond.bits_w, cond.bits_a, cond.bits_kv)
    alloc = compute_optimal(law, laws, flops, cond)
    plan = Plan(law.id, law.name, law.source, alloc, hw, budget_flops=flops)
    if law.inference and not cond.served_tokens:
        plan.notes.append("no --served-tokens: inference-aware law reduces to its training-only optimum")
    if law.data_constrained and not cond.unique_tokens:
        plan.notes.append("no --unique-tokens: every token assumed unique")
    if law.form == "vocabulary":
        plan.notes.append(f"vocabulary size {alloc.extras['vocab_size']:,.0f} at width {alloc.extras['width']:.0f}")
    return plan


def plan_for_model(law: Law, laws: dict[str, Law], params: float, *, tokens: float | None = None,
                   budget: Budget | None = None, hw: Hardware | None = None, flops_per_token: float | None = None,
                   cond: Conditions = NO_CONDITIONS) -> Plan:
    """The reverse direction: a given model size and either a token count or a budget.

    ``flops_per_token`` overrides 6N (e.g. :func:`training_flops_per_token` of an architecture).
    """
    if not (math.isfinite(params) and params > 0):
        raise InputError(f"parameter count must be positive, got {params!r}", field="params")
    fpt = flops_per_token if flops_per_token else TRAIN_FLOPS_PER_PARAM_TOKEN * params
    notes = []
    if tokens is None:
        if budget is None:
            raise InputError("give a token count (--tokens) or a budget", field="tokens")
        flops = budget_to_flops(budget, hw)
        tokens = flops / fpt
    else:
        if not (math.isfinite(tokens) and tokens > 0):
            raise InputError(f"token count must be positive, got {tokens!r}", field="tokens")
        flops = None
    train = fpt * tokens
    loss = predict_loss(law, laws, params, tokens, cond)
    alloc = Allocation(law.id, params, tokens, train, float(loss))
    if law.form == "kaplan":
        b = kaplan_critical_batch_tokens(law, float(loss))
        if b:
            alloc.extras["critical_batch_tokens"] = b
    optimum = compute_optimal(law, laws, train, Conditions(cond.unique_tokens, 0.0, 1.0, cond.bits_w, cond.bits_a, cond.bits_kv))
    alloc.extras["compute_optimal_params_same_flops"] = optimum.params
    alloc.extras["compute_optimal_loss_same_flops"] = optimum.loss
    if flops_per_token:
        notes.append(f"training FLOPs from the architecture: {fpt:.4g} per token (vs 6N = {6 * params:.4g})")
    return Plan(law.id, law.name, law.source, alloc, hw, budget_flops=flops, notes=notes)


def iso_flop_curve(law: Law, laws: dict[str, Law], flops: float, n_points: int = 60,
                   cond: Conditions = NO_CONDITIONS) -> tuple[np.ndarray, np.ndarray]:
    """Loss vs parameters at a fixed training compute (D = C / 6N), a decade either side of the optimum."""
    opt = compute_optimal(law, laws, flops, Conditions(cond.unique_tokens, 0.0, 1.0, cond.bits_w, cond.bits_a, cond.bits_kv))
    ns = np.logspace(math.log10(opt.params) - 1.0, math.log10(opt.params) + 1.0, n_points)
    ds = flops / (TRAIN_FLOPS_PER_PARAM_TOKEN * ns)
    return ns, np.asarray(predict_loss(law, laws, ns, ds, cond), dtype=float)
