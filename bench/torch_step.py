# torch_step.py: a PyTorch training step of the model in a d2v step dump, timed after warm-up.
"""Usage: torch_step.py DUMP.h5 UPDATES

The model, batch and masks are the dump's (tests/ref/step_ref.py builds them), so the step is
the same work d2v's trainer_update does: the EMA of the teacher's averaged tensors, the
teacher's forward, the student's forward and backward, gradient clipping and AdamW. Threads come
from OMP_NUM_THREADS / MKL_NUM_THREADS, set before torch loads (bench/run.sh)."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "ref"))
import step_ref as R  # noqa: E402
import torch  # noqa: E402


def main():
    path, updates = sys.argv[1], int(sys.argv[2])
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    dump = R.Dump(path)
    model = R.RefModel(dump, torch.float32)
    model.load(model.student, dump["params_before"], dump.table)
    model.load(model.teacher, dump["teacher_before"], dump.table)
    model.load_shared(dump["params_before"], dump.table)
    x = model.inputs(dump)
    params = model.student_params()
    c = dump.cfg
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(c["optim.beta1"], c["optim.beta2"]),
                            eps=c["optim.eps"], weight_decay=c["optim.weight_decay"])
    pairs = [(t, s) for name in model.ema_names if name in model.teacher
             for t, s in zip(model.teacher[name], model.student[name])]
    tp, sp = [t for t, _ in pairs], [s for _, s in pairs]
    clip = c["optim.clip"]

    def step():
        with torch.no_grad():
            torch._foreach_mul_(tp, 0.999)
            torch._foreach_add_(tp, sp, alpha=0.001)
        opt.zero_grad(set_to_none=True)
        model.forward_loss(x)["mean"].backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    for _ in range(2):  # warm-up
        step()
    best = 1e30
    for _ in range(updates):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    print(f"torch_step {best:.4f} s/update (best of {updates}, {threads} threads, "
          f"torch {torch.__version__})")


if __name__ == "__main__":
    main()
