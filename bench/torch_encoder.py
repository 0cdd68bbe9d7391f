# torch_encoder.py: PyTorch fwd+bwd timing of the same post-LN encoder and batches as bench_encoder.
import os
import sys
import time

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch is imported (see PITFALLS)
import torch  # noqa: E402

torch.set_num_threads(threads)


def flops(L, C, F, B, T):
    n = B * T
    return 3 * L * (2 * n * (4 * C * C + 2 * C * F) + 4 * B * T * T * C)


def bench(name, L, C, NH, F, B, T, iters):
    layers = torch.nn.ModuleList(
        torch.nn.TransformerEncoderLayer(C, NH, F, dropout=0.0, activation="gelu",
                                         batch_first=True, norm_first=False) for _ in range(L))
    x = torch.randn(B, T, C, requires_grad=True)
    dout = torch.randn(B, T, C)

    def step():
        h = x
        for layer in layers:
            h = layer(h)
        h.backward(dout)

    step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    dt = (time.perf_counter() - t0) / iters
    print(f"{name:6s} L={L:<2d} C={C:<3d} T={T:<3d} B={B}  fwd+bwd {dt:7.3f} s/iter  "
          f"{flops(L, C, F, B, T) / dt / 1e9:6.1f} GFLOP/s  (torch {torch.__version__})")


bench("small", 6, 384, 6, 1536, 8, 196, 3)
bench("small", 6, 384, 6, 1536, 4, 512, 3)
bench("base", 12, 768, 12, 3072, 4, 196, 2)
bench("base", 12, 768, 12, 3072, 2, 512, 2)
