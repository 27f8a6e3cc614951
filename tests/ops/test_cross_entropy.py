"""The chunked output layer + cross-entropy against float64 math: the per-token loss and the
gradients of the hidden states and of the output weight, for an incoming gradient that is not
uniform over tokens (no assumption on the loss's reduction), chunks that do not divide the tokens."""

from __future__ import annotations

import torch

from megaomni.ops.cross_entropy import chunked_cross_entropy


def test_chunked_loss_and_gradients_equal_float64_math():
    gen = torch.Generator().manual_seed(0)
    s, b, h, vocab = 11, 2, 16, 50
    hidden = torch.randn(s, b, h, generator=gen, requires_grad=True)
    weight = (torch.randn(vocab, h, generator=gen) * 0.5).requires_grad_()
    labels = torch.randint(0, vocab, (b, s), generator=gen)
    upstream = torch.rand(b, s, generator=gen)

    loss = chunked_cross_entropy(hidden, weight, labels, chunk=4)  # 22 tokens: chunks of 4, 4, ..., 2
    (loss * upstream).sum().backward()

    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    logits = torch.einsum("sbh,vh->bsv", h64, w64)
    reference = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1),
                                                  reduction="none").view(b, s)
    (reference * upstream.double()).sum().backward()

    assert loss.shape == (b, s) and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-6)
