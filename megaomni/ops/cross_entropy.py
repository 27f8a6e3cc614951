"""The loss without megatron-core's passes: the output layer and cross-entropy in one, over
chunks of tokens, without the full logits (``chunked``); and torch's own loss over the whole fp32
logits (``torch``, :func:`full_cross_entropy`).

megatron-core's path materialises the logits ``[tokens, vocab]`` in bf16, then in fp32 for the
softmax, and keeps fp32 softmax for backward: at 8,192 tokens and Qwen2's 151,936 words that is
~12 GB a micro-batch. Here each chunk's logits exist only inside the chunk: forward keeps the
per-token log-sum-exp (4 bytes a token); backward recomputes each chunk's logits (one more
``[chunk, hidden] x [hidden, vocab]`` GEMM: a third more output-layer FLOPs, not counted in MFU)
and turns them into the gradient at once. Exact for any incoming gradient (no assumption about
the loss's reduction), in fp32 math like megatron-core's.

One tensor-parallel rank only (the whole vocabulary here): the trainer picks megatron-core's
vocab-parallel loss under ``parallel.tp > 1`` (``train.cross_entropy``).
"""

from __future__ import annotations

import torch

# Tokens a chunk: 4k x 152k fp32 scores are ~2.5 GB, few enough chunks that each GEMM stays large.
CHUNK_TOKENS = 4096


def _chunks(n: int, size: int):
    return [(start, min(start + size, n)) for start in range(0, n, size)]


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int):
        """``hidden [n, h]``, ``weight [vocab, h]``, ``labels [n]`` -> per-token loss ``[n]`` (fp32)."""
        loss = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(loss)
        for start, end in _chunks(hidden.shape[0], chunk):
            logits = (hidden[start:end] @ weight.t()).float()
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            loss[start:end] = lse[start:end] - logits.gather(1, labels[start:end, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        hidden, weight, labels, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start, end in _chunks(hidden.shape[0], ctx.chunk):
            h = hidden[start:end]
            # d loss / d logits = softmax - one-hot, scaled by each token's incoming gradient.
            grad = torch.exp((h @ weight.t()).float() - lse[start:end, None])
            grad.scatter_add_(1, labels[start:end, None], -torch.ones_like(lse[start:end, None]))
            grad = (grad * grad_loss[start:end, None]).to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad @ weight
            if grad_weight is not None:
                grad_weight += (grad.t() @ h).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """Per-token cross-entropy of ``hidden [s, b, h] @ weight.T`` against ``labels [b, s]``, as
    ``[b, s]`` fp32 (what megatron-core's ``compute_language_model_loss`` returns)."""
    s, b, h = hidden.shape
    flat = hidden.transpose(0, 1).reshape(b * s, h)
    loss = _ChunkedLinearCrossEntropy.apply(flat, weight, labels.reshape(-1), chunk)
    return loss.view(b, s)


def full_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of ``logits [s, b, vocab]`` (the whole vocabulary) against
    ``labels [b, s]``, as ``[b, s]`` fp32: torch's log-softmax and NLL kernels over fp32 logits
    (what the plain-PyTorch baseline runs), where megatron-core's vocab-parallel loss makes a
    separate pass over the ``[tokens, vocab]`` scores for each of its max, subtract, exp, sum and
    gradient steps."""
    s, b, vocab = logits.shape
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(s * b, vocab), labels.t().reshape(-1),
                                             reduction="none")
    return loss.view(s, b).t()
