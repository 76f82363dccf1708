"""Model architectures: typed description of a decoder-only transformer and its parameter count.

Presets live in ``data/models/*.yaml``; a Hugging Face ``config.json`` is accepted too
(:func:`from_hf_config`), offline. Parameter counts are computed per component from the
architecture and checked in the tests against each model's published total.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator, model_validator

from .errors import InputError, from_validation_error
from .inputs import cached_by_file, once_per_look, stat as _stat
from .specs import package_data_dir, read_yaml

# Bounds on architecture sizes, far beyond any model (the largest have ~130 layers, hidden sizes
# near 2^15, vocabularies near 2^18): they keep absurd inputs (a config with 10^12 layers) from
# reaching the formulas and the layout search as numbers nothing can be computed with.
MAX_LAYERS = 100_000
MAX_DIM = 2**31 - 1  # hidden, ffn, heads, vocab, context: the int32 range of tensor shapes

# "gelu_new": the tanh-approximate GELU computed op by op (Hugging Face GPT-2's NewGELUActivation),
# the same FLOPs as "gelu" but eight elementwise kernels and five saved tensors.
Activation = Literal["gelu", "gelu_new", "relu", "swiglu", "geglu", "squared-relu"]
GATED = ("swiglu", "geglu")


class MoEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    experts: int = Field(ge=1, le=MAX_DIM)
    top_k: int = Field(ge=1, le=MAX_DIM)
    expert_ffn: int = Field(ge=1, le=MAX_DIM)
    shared_experts: int = Field(default=0, ge=0, le=MAX_DIM)
    shared_expert_ffn: int | None = Field(default=None, ge=1, le=MAX_DIM)  # default: expert_ffn
    dense_layers: int = Field(default=0, ge=0, le=MAX_LAYERS)  # first layers with a dense MLP (DeepSeek)
    router_bias: bool = False
    # Group-limited routing (DeepSeek-V3's node-limited routing, arXiv:2412.19437 sec. 2.1.2; HF
    # n_group / topk_group; Megatron-core --moe-router-num-groups / --moe-router-group-topk): the
    # experts form router_groups equal groups of consecutive experts and a token's top_k experts
    # come from its router_group_topk best groups. None: any experts.
    router_groups: int | None = Field(default=None, ge=1, le=MAX_DIM)
    router_group_topk: int | None = Field(default=None, ge=1, le=MAX_DIM, validate_default=True)

    @field_validator("top_k")
    @classmethod
    def _k(cls, top_k, info):
        # a field validator, so the error names the field (moe.top_k)
        experts = info.data.get("experts")
        if experts is not None and top_k > experts:
            raise ValueError(f"top_k ({top_k}) cannot exceed experts ({experts})")
        return top_k

    @field_validator("router_group_topk")
    @classmethod
    def _groups(cls, group_topk, info):
        groups, experts, k = info.data.get("router_groups"), info.data.get("experts"), info.data.get("top_k")
        if (groups is None) != (group_topk is None):
            raise ValueError("router_groups and router_group_topk come together (or neither)")
        if groups is None or experts is None or k is None:
            return group_topk
        if experts % groups:
            raise ValueError(f"router_groups ({groups}) must divide experts ({experts})")
        if group_topk > groups or k > group_topk * (experts // groups):
            raise ValueError(f"router_group_topk ({group_topk}) must be at most router_groups ({groups}) and its "
                             f"groups must hold top_k ({k}) experts")
        return group_topk


class MLAConfig(BaseModel):
    """Multi-head latent attention (DeepSeek-V2/V3, arXiv:2405.04434 section 2.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    q_lora_rank: int | None = Field(default=None, ge=1, le=MAX_DIM)  # None: q projected directly
    kv_lora_rank: int = Field(ge=1, le=MAX_DIM)
    qk_nope_head_dim: int = Field(ge=1, le=MAX_DIM)
    qk_rope_head_dim: int = Field(ge=1, le=MAX_DIM)
    v_head_dim: int = Field(ge=1, le=MAX_DIM)


class ModelConfig(BaseModel):
    # strict: a count given as text ("4096") or a float is an error, not silently converted
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    name: str = ""
    family: str = "custom"
    source: str = ""
    layers: int = Field(ge=1, le=MAX_LAYERS)
    hidden: int = Field(ge=1, le=MAX_DIM)
    heads: int = Field(ge=1, le=MAX_DIM)
    kv_heads: int | None = Field(default=None, ge=1, le=MAX_DIM)  # default: heads (MHA)
    head_dim: int | None = Field(default=None, ge=1, le=MAX_DIM)  # default: hidden / heads
    ffn: int = Field(ge=1, le=MAX_DIM)
    activation: Activation = "swiglu"
    vocab: int = Field(ge=1, le=MAX_DIM)
    tied_embeddings: bool = False
    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    norm_bias: bool = True  # a LayerNorm's shift (beta); PaLM's norms have none (scale only)
    norms_per_layer: int = Field(default=2, ge=0, le=64)  # Gemma 2: 4 (pre and post)
    positions: Literal["learned", "rope", "alibi", "none"] = "rope"
    max_context: int = Field(default=2048, ge=1, le=MAX_DIM)
    qkv_bias: bool = False
    bias: bool = False  # biases on every linear layer (GPT-2/3)
    parallel_block: bool = False  # attention and MLP side by side (GPT-J, Falcon)
    attention: Literal["mha", "gqa", "mqa", "mla"] = "mha"
    sliding_window: int | None = Field(default=None, ge=1, le=MAX_DIM)
    sliding_window_every: int = Field(default=1, ge=1, le=MAX_LAYERS)  # 2: every other layer (Gemma 2)
    mla: MLAConfig | None = None
    moe: MoEConfig | None = None
    published_params: int | None = Field(default=None, ge=1, le=10**16)
    params_source: str = ""

    @field_validator("kv_heads")
    @classmethod
    def _kv_divides_heads(cls, kv_heads, info):
        # a field validator, so the error names the field (kv_heads)
        heads = info.data.get("heads")
        if kv_heads is not None and heads is not None and heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        return kv_heads

    @model_validator(mode="after")
    def _consistent(self):
        kv = self.n_kv_heads
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) is not divisible by heads ({self.heads}); set head_dim")
        if self.attention == "mla" and self.mla is None:
            raise ValueError("attention 'mla' needs an 'mla' section")
        if self.attention == "mqa" and kv != 1:
            raise ValueError("attention 'mqa' needs kv_heads 1")
        if self.moe and self.moe.dense_layers > self.layers:
            raise ValueError("moe.dense_layers exceeds layers")
        return self

    # ---- derived sizes
    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.d_head

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.d_head

    @property
    def moe_layers(self) -> int:
        return 0 if self.moe is None else self.layers - self.moe.dense_layers

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    # ---- parameter counts per component
    def attention_params(self) -> int:
        h = self.hidden
        if self.attention == "mla":
            m = self.mla
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            if m.q_lora_rank:
                q = h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * self.heads * qk  # incl. q_a norm
            else:
                q = h * self.heads * qk
            kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank  # incl. kv_a norm
            kv += m.kv_lora_rank * self.heads * (m.qk_nope_head_dim + m.v_head_dim)
            o = self.heads * m.v_head_dim * h
            return q + kv + o
        p = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.qkv_bias or self.bias:
            p += self.q_dim + 2 * self.kv_dim
        if self.bias:
            p += h
        return p

    def _mlp_params(self, ffn: int, bias: bool) -> int:
        mats = 3 if self.activation in GATED else 2
        p = mats * self.hidden * ffn
        if bias:
            p += (mats - 1) * ffn + self.hidden
        return p

    def dense_mlp_params(self) -> int:
        return self._mlp_params(self.ffn, self.bias)

    def expert_params(self) -> int:
        """One routed expert."""
        return self._mlp_params(self.moe.expert_ffn, self.bias)

    def shared_expert_params(self) -> int:
        m = self.moe
        return m.shared_experts * self._mlp_params(m.shared_expert_ffn or m.expert_ffn, self.bias)

    def router_params(self) -> int:
        return self.hidden * self.moe.experts + (self.moe.experts if self.moe.router_bias else 0)

    def norm_params(self) -> int:
        per = self.hidden * (2 if self.norm == "layernorm" and self.norm_bias else 1)
        return per

    def param_breakdown(self) -> dict[str, int]:
        """Parameters by component, summed over layers. Keys are stable (used in reports)."""
        L = self.layers
        out = {
            "embedding": self.vocab * self.hidden,
            "position_embedding": self.max_context * self.hidden if self.positions == "learned" else 0,
            "attention": L * self.attention_params(),
            "mlp_dense": self.dense_layers * self.dense_mlp_params(),
            "moe_router": 0,
            "moe_experts": 0,
            "moe_shared_experts": 0,
            "norms": L * self.norms_per_layer * self.norm_params() + self.norm_params(),
            "lm_head": 0 if self.tied_embeddings else self.vocab * self.hidden,
        }
        if self.moe:
            n = self.moe_layers
            out["moe_router"] = n * self.router_params()
            out["moe_experts"] = n * self.moe.experts * self.expert_params()
            out["moe_shared_experts"] = n * self.shared_expert_params()
        return out

    @property
    def params(self) -> int:
        hit = _PARAMS.get(id(self))  # (once per model: it is frozen)
        if hit is None or hit[0] is not self:
            if len(_PARAMS) > 4096:
                _PARAMS.clear()
            hit = _PARAMS[id(self)] = (self, sum(self.param_breakdown().values()))
        return hit[1]

    @property
    def active_params(self) -> int:
        """Parameters touched per token (MoE: top_k routed experts plus shared ones)."""
        total = self.params
        if self.moe:
            total -= self.moe_layers * (self.moe.experts - self.moe.top_k) * self.expert_params()
        return total

    @property
    def non_embedding_params(self) -> int:
        b = self.param_breakdown()
        return self.params - b["embedding"] - b["position_embedding"] - b["lm_head"]

    def layer_params(self, moe_layer: bool | None = None) -> int:
        """Parameters of one decoder layer (a MoE layer unless moe_layer is False)."""
        p = self.attention_params() + self.norms_per_layer * self.norm_params()
        if self.moe and moe_layer is not False:
            return p + self.router_params() + self.moe.experts * self.expert_params() + self.shared_expert_params()
        return p + self.dense_mlp_params()


_PARAMS: dict = {}  # id(model) -> (model, ModelConfig.params)


# ---------------------------------------------------------------------------------- families

# The PaLM block (Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways",
# arXiv:2204.02311, sec. 2 "Model Architecture"): SwiGLU MLP; "parallel layers"
# y = x + MLP(LayerNorm(x)) + Attention(LayerNorm(x)), one LayerNorm shared by both branches;
# multi-query attention (K and V projected to one head of size 256 shared by all query heads);
# RoPE; shared input-output embeddings; "no biases were used in any of the dense kernels or
# layer norms". Only the shape (layers, hidden, heads, head_dim, ffn, vocab) varies by size.
PALM_BLOCK = dict(activation="swiglu", norm="layernorm", norm_bias=False, norms_per_layer=1, parallel_block=True,
                  attention="mqa", kv_heads=1, bias=False, qkv_bias=False, tied_embeddings=True, positions="rope")


def palm_model(model_id: str, layers: int, hidden: int, heads: int, head_dim: int, ffn: int, vocab: int = 256_000,
               **extra) -> ModelConfig:
    """A model built of PaLM blocks (PALM_BLOCK) with the given shape."""
    data = dict(PALM_BLOCK, id=model_id, family="palm", layers=layers, hidden=hidden, heads=heads, head_dim=head_dim,
                ffn=ffn, vocab=vocab, **extra)
    return parse_model(data, f"<palm {model_id}>")


# ---------------------------------------------------------------------------------- loading

def parse_model(data: object, file: str | Path = "<model>") -> ModelConfig:
    if not isinstance(data, dict):
        raise InputError("expected a mapping of model fields at the top level", file=file)
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, file) from None


def models_dir() -> Path:
    return package_data_dir("data") / "models"


def _models_dir_str() -> str:
    global _MODELS_DIR
    if _MODELS_DIR is None:
        _MODELS_DIR = str(models_dir())
    return _MODELS_DIR


_MODELS_DIR: str | None = None


def list_presets() -> list[str]:
    return sorted(p.stem for p in models_dir().glob("*.yaml"))


def did_you_mean(name: str, known: list[str], n: int = 3) -> list[str]:
    """The known ids closest to a mistyped one (difflib), also matching a hub id's last part with
    its punctuation dropped ('meta-llama/Meta-Llama-3-8B' -> llama3-8b)."""
    import difflib

    key = name.lower()
    tail = key.rsplit("/", 1)[-1]
    squash = lambda t: "".join(ch for ch in t if ch.isalnum())  # noqa: E731
    by_squash = {squash(k): k for k in known}
    out = difflib.get_close_matches(key, known, n=n, cutoff=0.6)
    for cand in difflib.get_close_matches(squash(tail.removeprefix("meta-")), list(by_squash), n=n, cutoff=0.6):
        if by_squash[cand] not in out:
            out.append(by_squash[cand])
    return out[:n]


def load_preset(name: str) -> ModelConfig:
    path = models_dir() / f"{name}.yaml"
    if not path.exists():
        close = did_you_mean(name, list_presets())
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        if "/" in name:
            hint += (" It looks like a Hugging Face hub id: costmodel works offline and downloads nothing; fetch its "
                     f"config.json (huggingface-cli download {name} config.json --local-dir DIR) and pass DIR or "
                     "DIR/config.json")
        raise InputError(f"unknown model preset {name!r}{hint} (`costmodel model list` lists the presets; a preset "
                         "YAML, a Hugging Face config.json or a model directory holding one also work)", field="model")
    return _model_file(path)


_PRESET_FILES: dict[str, str] = {}  # preset id -> the file it would be


def _model_file(path: Path | str) -> ModelConfig:
    """A preset-format YAML file's model, parsed once per version of the file (ModelConfig is frozen)."""
    return cached_by_file("model", path, lambda: parse_model(read_yaml(Path(path)), Path(path)))


def _hf_file(path: Path, model_id: str | None = None) -> ModelConfig:
    """from_hf_config, once per version of the file and id."""
    from .inputs import cached_by_file

    return cached_by_file("hf-config", path, lambda: from_hf_config(path, model_id=model_id), model_id)


def load_model(name_or_file: str) -> ModelConfig:
    """A preset id, a preset-format YAML file, a Hugging Face config.json, or a Hugging Face model
    directory (one holding config.json, as ``save_pretrained`` or a hub download writes it)."""
    if type(name_or_file) is str:  # (once per estimate: inputs.one_look)
        return once_per_look(("model", name_or_file), lambda: _load_model(name_or_file))
    return _load_model(name_or_file)


def _load_model(name_or_file: str) -> ModelConfig:
    if isinstance(name_or_file, str) and _stat(name_or_file) is None:
        # the common case, a preset id (nothing of that name here): straight to the preset's file
        if not name_or_file.endswith((".json", ".yaml", ".yml")) and os.sep not in name_or_file:
            path = _PRESET_FILES.get(name_or_file)
            if path is None:
                if len(_PRESET_FILES) > 4096:
                    _PRESET_FILES.clear()
                path = _PRESET_FILES[name_or_file] = os.path.join(_models_dir_str(), name_or_file + ".yaml")
            st = _stat(path)
            if st is not None and stat.S_ISREG(st.st_mode):
                return _model_file(path)
    p = Path(name_or_file)
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise InputError("a directory without config.json; expected a Hugging Face model directory, "
                             "a config.json, a preset YAML or a preset id", file=p)
        return _hf_file(cfg, model_id=p.resolve().name)
    if p.suffix in (".json", ".yaml", ".yml") or p.exists():
        if not p.exists():
            raise InputError("file does not exist", file=p)
        if p.suffix == ".json":
            return _hf_file(p)
        return _model_file(p)
    return load_preset(name_or_file)


def _model_id(name: str) -> str:
    """A directory name as a model id: lower case, characters other than [a-z0-9._-] as '-'."""
    out = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "._-" else "-" for ch in name.lower()).strip("-._")
    return out or "hf-model"


_Count = Annotated[StrictInt, Field(ge=1, le=MAX_DIM)]
_Layers = Annotated[StrictInt, Field(ge=1, le=MAX_LAYERS)]


class HFConfig(BaseModel):
    """The fields of a Hugging Face ``config.json`` that :func:`from_hf_config` reads, checked
    before any is used: counts are JSON integers >= 1 (a ``"4096"`` string, a 0 or a null where a
    number is needed is an error naming the key), switches are true / false. ``null`` means "not
    set", as in transformers (the next key or the default is used). Other keys are ignored."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    model_type: StrictStr | None = None
    name_or_path: StrictStr | None = Field(default=None, alias="_name_or_path")
    hidden_size: _Count | None = None
    n_embd: _Count | None = None
    d_model: _Count | None = None
    num_attention_heads: _Count | None = None
    n_head: _Count | None = None
    num_hidden_layers: _Layers | None = None
    n_layer: _Layers | None = None
    num_key_value_heads: _Count | None = None
    num_kv_heads: _Count | None = None
    multi_query: StrictBool | None = None
    intermediate_size: _Count | None = None
    n_inner: _Count | None = None
    ffn_hidden_size: _Count | None = None
    vocab_size: _Count | None = None
    head_dim: _Count | None = None
    hidden_act: StrictStr | None = None
    activation_function: StrictStr | None = None
    tie_word_embeddings: StrictBool | None = None
    max_position_embeddings: _Count | None = None
    n_positions: _Count | None = None
    attention_bias: StrictBool | None = None
    alibi: StrictBool | None = None
    sliding_window: _Count | None = None
    use_sliding_window: StrictBool | None = None
    parallel_attn: StrictBool | None = None
    new_decoder_architecture: StrictBool | None = None
    num_ln_in_parallel_attn: Annotated[StrictInt, Field(ge=1, le=64)] | None = None
    bias: StrictBool | None = None
    num_local_experts: _Count | None = None
    n_routed_experts: _Count | None = None
    num_experts: _Count | None = None
    num_experts_per_tok: _Count | None = None
    moe_intermediate_size: _Count | None = None
    n_shared_experts: Annotated[StrictInt, Field(ge=0, le=MAX_DIM)] | None = None
    first_k_dense_replace: Annotated[StrictInt, Field(ge=0, le=MAX_LAYERS)] | None = None
    topk_method: StrictStr | None = None
    n_group: _Count | None = None
    topk_group: _Count | None = None
    kv_lora_rank: _Count | None = None
    q_lora_rank: _Count | None = None
    qk_nope_head_dim: _Count | None = None
    qk_rope_head_dim: _Count | None = None
    v_head_dim: _Count | None = None


def from_hf_config(path: str | Path, model_id: str | None = None) -> ModelConfig:
    """Read a Hugging Face transformers ``config.json`` (offline) into a ModelConfig. ``model_id``:
    the id to give it (default: the file's stem, or the model type for a file named config.json).
    The file is checked against :class:`HFConfig` first: every error names the file and the key."""
    from .inputs import load_json

    path = Path(path)
    cfg = load_json(path)
    if not isinstance(cfg, dict):
        raise InputError("expected a JSON object", file=path)
    try:
        HFConfig.model_validate(cfg)
    except ValidationError as exc:
        raise from_validation_error(exc, path) from None

    def first(*keys, default=None):
        """The value of the first key that is set (not absent, not null), else ``default``."""
        for k in keys:
            if cfg.get(k) is not None:
                return cfg[k]
        return default

    def need(*keys):
        v = first(*keys)
        if v is None:
            raise InputError(f"missing; expected one of {', '.join(keys)}", file=path, field=keys[0])
        return v

    mt = cfg.get("model_type")
    mt = "custom" if mt is None else mt
    hidden = need("hidden_size", "n_embd", "d_model")
    heads = need("num_attention_heads", "n_head")
    layers = need("num_hidden_layers", "n_layer")
    gpt2 = mt in ("gpt2", "gpt_neo", "gptj", "opt")
    act = str(first("hidden_act", "activation_function", default="silu"))
    gated = not gpt2 and mt not in ("falcon", "gpt_bigcode")
    activation = ("geglu" if "gelu" in act else "swiglu") if gated else (
        "relu" if act == "relu" else ("gelu_new" if act == "gelu_new" else "gelu"))
    data: dict = dict(
        id=_model_id(model_id) if model_id else (
            _model_id(path.stem.replace("_", "-")) if path.stem != "config" else _model_id(mt.replace("_", "-"))),
        name=str(cfg.get("_name_or_path") or model_id or path.name),
        family=mt,
        source=f"Hugging Face config {path.name}",
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=first("num_key_value_heads", "num_kv_heads", default=1 if cfg.get("multi_query") else heads),
        ffn=first("intermediate_size", "n_inner", "ffn_hidden_size", default=4 * hidden),
        activation=activation,
        vocab=need("vocab_size"),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", gpt2)),
        norm="layernorm" if gpt2 or mt == "falcon" else "rmsnorm",
        positions="learned" if gpt2 else ("alibi" if cfg.get("alibi") else "rope"),
        max_context=first("max_position_embeddings", "n_positions", default=2048),
        qkv_bias=bool(cfg.get("attention_bias", mt == "qwen2")),
        bias=gpt2,
    )
    if cfg.get("head_dim") is not None:
        data["head_dim"] = cfg["head_dim"]
    kv = data["kv_heads"]
    data["attention"] = "mha" if kv == heads else ("mqa" if kv == 1 else "gqa")
    if cfg.get("sliding_window") is not None and cfg.get("use_sliding_window", True):
        data["sliding_window"] = cfg["sliding_window"]
    if mt == "gemma2":
        data.update(norms_per_layer=4, sliding_window_every=2, tied_embeddings=True)
    if mt == "falcon":
        # transformers FalconDecoderLayer: parallel attention/MLP reading one shared LayerNorm (7B),
        # or ln_attn + ln_mlp with new_decoder_architecture (40B/180B); FalconConfig ties embeddings
        # by default and has no biases unless `bias` is set.
        parallel = bool(cfg.get("parallel_attn", True))
        if cfg.get("new_decoder_architecture"):
            norms = first("num_ln_in_parallel_attn", default=2)
        else:
            norms = 1 if parallel else 2
        data.update(parallel_block=parallel, norms_per_layer=norms, bias=bool(cfg.get("bias", False)),
                    tied_embeddings=bool(cfg.get("tie_word_embeddings", True)))
    n_exp = first("num_local_experts", "n_routed_experts", "num_experts")
    if n_exp is not None:
        data["moe"] = dict(
            experts=n_exp,
            top_k=first("num_experts_per_tok", default=2),
            expert_ffn=first("moe_intermediate_size", default=data["ffn"]),
            shared_experts=first("n_shared_experts", default=0),
            dense_layers=first("first_k_dense_replace", default=0),
            # DeepSeek-V3 aux-loss-free balancing keeps a per-expert gate bias, e_score_correction_bias
            # (arXiv:2412.19437 section 2.1.2), stored in the checkpoint for every MoE layer
            router_bias=cfg.get("topk_method") == "noaux_tc",
        )
        if (cfg.get("n_group") or 1) > 1:  # group-limited routing (DeepSeek-V2/V3: n_group, topk_group)
            data["moe"].update(router_groups=cfg["n_group"], router_group_topk=first("topk_group", default=cfg["n_group"]))
    if cfg.get("kv_lora_rank") is not None:
        for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            if cfg.get(k) is None:
                raise InputError("missing; kv_lora_rank (multi-head latent attention) needs qk_nope_head_dim, "
                                 "qk_rope_head_dim and v_head_dim", file=path, field=k)
        data["attention"] = "mla"
        data["mla"] = dict(
            q_lora_rank=cfg.get("q_lora_rank"),
            kv_lora_rank=cfg["kv_lora_rank"],
            qk_nope_head_dim=cfg["qk_nope_head_dim"],
            qk_rope_head_dim=cfg["qk_rope_head_dim"],
            v_head_dim=cfg["v_head_dim"],
        )
    return parse_model(data, path)
