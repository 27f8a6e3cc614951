"""The building blocks of configuration rules: each failing rule raises one
:class:`~megaomni.config.ConfigError` line naming the field, its value and what would be valid."""

from __future__ import annotations

from megaomni.config import ACTIVATIONS, NORMS, ConfigError


def divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def require_choice(field: str, value, choices) -> None:
    require(value in choices, f"{field}={value}: valid: {', '.join(map(str, choices))}")


def require_stack(section: str, obj) -> None:
    """The fields of an encoder's transformer blocks (megaomni.layers.transformer_config)."""
    require_choice(f"{section}.norm", obj.norm, NORMS)
    require_choice(f"{section}.activation", obj.activation, ACTIVATIONS)


def require_positive(section: str, obj, fields: tuple[str, ...]) -> None:
    for name in fields:
        value = getattr(obj, name)
        require(value > 0, f"{section}.{name}={value}: must be a positive integer")


def require_heads(prefix: str, hidden: int, heads: int, rope_multiple: int) -> None:
    """``hidden`` splits into ``heads`` heads whose dim rotary embeddings can rotate."""
    require(hidden % heads == 0,
            f"{prefix}.hidden_size={hidden}: must be divisible by {prefix}.num_attention_heads={heads}")
    head_dim = hidden // heads
    require(head_dim % rope_multiple == 0,
            f"{prefix}.hidden_size/num_attention_heads={head_dim}: rotary embeddings need a head "
            f"dim divisible by {rope_multiple}")
