"""Dense attention baseline for PERF.md's protocol: torch SDPA with the cuDNN backend at W1 (B=1, H=12, L=32760,
D=128, bf16), CUDA events, median of 20 after 5 warm-ups: the forward alone, then one training step (forward +
backward against a random dO). Prints the lines the device scripts grep."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, L, D = 1, 12, 32760, 128


def median_ms(step, iters=25, warmup=5):
    times = []
    for it in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step()
        e.record()
        torch.cuda.synchronize()
        if it >= warmup:
            times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
d_o = torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    with torch.no_grad():
        fwd = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))

    def train_step():
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        torch.autograd.grad(o, (q, k, v), d_o)

    step = median_ms(train_step)
print(f"CUDNN_FWD_MS {fwd:.4f} on {torch.cuda.get_device_name()}")
print(f"CUDNN_STEP_MS {step:.4f} (forward + backward) on {torch.cuda.get_device_name()}")
