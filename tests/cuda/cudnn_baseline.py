"""Dense attention baseline for PERF.md's protocol: torch SDPA with the cuDNN backend at W1 (B=1, H=12, L=32760,
D=128, bf16), forward only, CUDA events, median of 20 after warm-up. Prints one line the device script greps."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, L, D = 1, 12, 32760, 128
q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
times = []
with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
    for it in range(25):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
        e.record()
        torch.cuda.synchronize()
        if it >= 5:
            times.append(s.elapsed_time(e))
times.sort()
print(f"CUDNN_FWD_MS {times[len(times) // 2]:.4f} on {torch.cuda.get_device_name()}")
