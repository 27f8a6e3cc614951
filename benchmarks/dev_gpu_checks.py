"""GPU checks of the new kernels in bf16 against the paths they replace (a throwaway of this session)."""
import torch, time
from megaomni.ops.attention import segment_attention, varlen_attention
from megaomni.ops.cross_entropy import chunked_cross_entropy
from megatron.core import parallel_state  # noqa
d = torch.device("cuda")
g = torch.Generator(device=d).manual_seed(0)
lengths = (9216, 2304, 2304, 1024, 4096, 64)
t = sum(lengths)
q, k, v = (torch.randn(t, 16, 80, device=d, dtype=torch.bfloat16, generator=g, requires_grad=True) for _ in range(3))
cu = torch.tensor((0, *torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)
def timed(fn, n=10):
    for _ in range(3): fn()
    torch.cuda.synchronize(); s = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - s) / n * 1e3
up = torch.randn_like(q)
def dense(): o = segment_attention(q, k, v, lengths, None); (o * up).sum().backward(); return o
def var(): o = varlen_attention(q, k, v, cu, max(lengths), causal=False, scale=None); (o * up).sum().backward(); return o
a, b = dense().detach(), var().detach()
print("segment vs varlen: max abs diff", (a.float() - b.float()).abs().max().item(), "ref max", b.abs().max().item())
print(f"fwd+bwd ms: dense {timed(dense):.2f}  varlen {timed(var):.2f}")
h = torch.randn(8192, 1, 1536, device=d, dtype=torch.bfloat16, generator=g, requires_grad=True)
w = (torch.randn(151936, 1536, device=d, dtype=torch.bfloat16, generator=g) * 0.02).requires_grad_()
lab = torch.randint(0, 151936, (1, 8192), device=d, generator=g)
def chunked(): l = chunked_cross_entropy(h, w, lab); l.sum().backward(); return l
def plain():
    from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy
    logits = (h @ w.t()).float()
    l = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), lab.view(-1), reduction="none").view(1, -1)
    l.sum().backward(); return l
la, lb = chunked().detach(), plain().detach()
print("chunked vs plain CE: max abs diff", (la - lb).abs().max().item())
for name, fn in (("chunked", chunked), ("plain fp32 logits", plain)):
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    ms = timed(fn, 5)
    print(f"CE {name}: {ms:.2f} ms fwd+bwd, peak +{(torch.cuda.max_memory_allocated() - base) / 2**30:.2f} GiB")
