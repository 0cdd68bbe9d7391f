# masks_v2_ref.py: numpy simulation of data2vec 2.0's three masks; exact counts and mask statistics to HDF5.
"""Re-implements, from their description (docs/algorithm.md §3.4), the masks data2vec 2.0 uses:

  block2d_inverse  fairseq compute_block_mask_2d(inverse_mask=True, require_same_masks=True)
                   (images): centres of KEPT blocks, then exactly int(L (1 - R)) kept cells
  block1d          fairseq compute_block_mask_1d(require_same_masks=True) (audio): centres of
                   masked blocks, then exactly int(T R) masked
  random           MAE random_masking (text): keep int(T (1 - R)) uniformly chosen positions

and writes build/fixtures/masks_v2_ref.h5 with

  /counts          one row per case (kind, H, W, R, block, adjust) and the masked count the
                   reference arithmetic (Python doubles, R and A written as decimals) gives
  /<config>        for one configuration, over `draws` masks of numpy's generator:
      pmask        (L,) how often each position is masked
      scal_mean/_sd  per-draw scalars: [components, neighbour fraction, largest component]
      hist_mean/_sd  per-draw number of components of size 1 .. HIST-1, and >= HIST
    where a component is a 4-connected set of KEPT cells (2-D) or a run of MASKED positions
    (1-D, random), and the neighbour fraction is the share of those cells that have a 4-neighbour
    (left/right neighbour in 1-D) of the same kind.

The C test (tests/test_masking_v2.c) computes the same statistics over as many of its own masks
and compares each mean within a z-score bound from both sides' per-draw standard deviations.

Usage: /usr/bin/python3 tests/ref/masks_v2_ref.py OUT.h5
"""
import os
import sys

import h5py
import numpy as np

KIND_2D, KIND_1D, KIND_RANDOM = 1, 2, 3  # V2MaskKind in include/d2v/masking.h
HIST = 16
DRAWS = 4000


def fail(msg):
    sys.exit(f"masks_v2_ref.py: {msg}")


# ---- the three algorithms ----------------------------------------------------------------------

def fix_count(x, target, rng):
    """require_same_masks: switch off (or on) uniformly chosen set (or unset) cells until exactly
    `target` are set (torch.multinomial on 0/1 weights = a uniform subset without replacement)."""
    n = int(x.sum())
    if n > target:
        x[rng.choice(np.flatnonzero(x), n - target, replace=False)] = 0
    elif n < target:
        x[rng.choice(np.flatnonzero(x == 0), target - n, replace=False)] = 1
    return x


def block2d_inverse(H, W, R, B, A, rng):
    L = H * W
    p = 1 - R  # inverse: the blocks are what stays visible
    nc = int(L * ((p + A) / B**2))
    keep = np.zeros((H, W), np.int64)
    off = B // 2  # even B: the block spans centre - B/2 .. centre + B/2 - 1
    for c in rng.integers(0, L, size=nc):
        r, q = divmod(int(c), W)
        # indices clamped to the grid: the same cells as clipping the block at the border
        rows = np.clip(np.arange(r - off, r - off + B), 0, H - 1)
        cols = np.clip(np.arange(q - off, q - off + B), 0, W - 1)
        keep[np.ix_(rows, cols)] = 1
    keep = fix_count(keep.reshape(-1), int(L * p), rng)
    return 1 - keep


def block1d(T, R, B, A, rng):
    nc = int(T * ((R + A) / B))
    mask = np.zeros(T, np.int64)
    off = B // 2
    for c in rng.integers(0, T, size=nc):
        mask[np.clip(np.arange(c - off, c - off + B), 0, T - 1)] = 1
    return fix_count(mask, int(T * R), rng)


def random_mask(T, R, rng):
    len_keep = int(T * (1 - R))
    ids_shuffle = np.argsort(rng.random(T))  # small noise is kept
    mask = np.ones(T, np.int64)
    mask[ids_shuffle[:len_keep]] = 0
    return mask


def expected_masked(kind, H, W, R, B, A):
    L = H * W
    if kind == KIND_2D:
        return L - int(L * (1 - R))
    if kind == KIND_1D:
        return int(L * R)
    return L - int(L * (1 - R))


# ---- statistics --------------------------------------------------------------------------------

def label_components(x, H, W):
    """4-connected components of x == 1 for a stack x of shape (N, H, W): label propagation to
    the smallest flat index in each component (vectorised over the stack)."""
    N = x.shape[0]
    big = H * W
    lab = np.where(x == 1, np.arange(H * W).reshape(1, H, W), big).astype(np.int64)
    while True:
        new = lab.copy()
        for axis, shift in ((1, 1), (1, -1), (2, 1), (2, -1)):
            nb = np.full_like(lab, big)
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            if shift == 1:
                dst[axis], src[axis] = slice(1, None), slice(None, -1)
            else:
                dst[axis], src[axis] = slice(None, -1), slice(1, None)
            nb[tuple(dst)] = lab[tuple(src)]
            new = np.minimum(new, nb)
        new = np.where(x == 1, new, big)
        if np.array_equal(new, lab):
            break
        lab = new
    lab = lab.reshape(N, -1)
    scal = np.zeros((N, 3))
    hist = np.zeros((N, HIST))
    for i in range(N):
        l = lab[i][lab[i] < big]
        if l.size == 0:
            continue
        sizes = np.bincount(l)
        sizes = sizes[sizes > 0]
        scal[i, 0] = sizes.size
        scal[i, 2] = sizes.max()
        np.add.at(hist[i], np.minimum(sizes, HIST) - 1, 1)
    # neighbour fraction
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    nb = (xp[:, :-2, 1:-1] + xp[:, 2:, 1:-1] + xp[:, 1:-1, :-2] + xp[:, 1:-1, 2:]) > 0
    cells = x.reshape(N, -1).sum(1)
    with_nb = (nb & (x == 1)).reshape(N, -1).sum(1)
    scal[:, 1] = np.where(cells > 0, with_nb / np.maximum(cells, 1), 0)
    return scal, hist


def simulate(name, kind, H, W, R, B, A, seed):
    rng = np.random.default_rng(seed)
    L = H * W
    want = expected_masked(kind, H, W, R, B, A)
    masks = np.zeros((DRAWS, L), np.int64)
    for d in range(DRAWS):
        if kind == KIND_2D:
            m = block2d_inverse(H, W, R, B, A, rng)
        elif kind == KIND_1D:
            m = block1d(L, R, B, A, rng)
        else:
            m = random_mask(L, R, rng)
        if int(m.sum()) != want:
            fail(f"{name}: draw {d} masks {int(m.sum())}, expected {want}")
        masks[d] = m
    if kind == KIND_2D:
        scal, hist = label_components(1 - masks.reshape(DRAWS, H, W), H, W)  # kept cells
    else:
        scal, hist = label_components(masks.reshape(DRAWS, 1, L), 1, L)  # masked runs
    attrs = {"kind": kind, "H": H, "W": W, "T": L, "R": R, "block": B, "adjust": A,
             "draws": DRAWS, "masked": want}
    ds = {"pmask": masks.mean(0), "scal_mean": scal.mean(0), "scal_sd": scal.std(0),
          "hist_mean": hist.mean(0), "hist_sd": hist.std(0)}
    print(f"{name}: kind {kind} {H}x{W} R={R} B={B} A={A}: masked {want}/{L}, components "
          f"{scal[:, 0].mean():.3f}, neighbour fraction {scal[:, 1].mean():.4f}, largest "
          f"{scal[:, 2].mean():.2f}")
    return attrs, ds


# ---- cases -------------------------------------------------------------------------------------

# name, kind, H, W (1-D: H = 1, W = T), R, block, adjust
CONFIGS = [
    ("img_base", KIND_2D, 14, 14, 0.8, 3, 0.07),   # data2vec 2.0 image base
    ("img_large", KIND_2D, 14, 14, 0.75, 3, 0.1),  # image large
    ("img_even", KIND_2D, 8, 8, 0.75, 2, 0.1),     # even block: the offset's direction shows
    ("img_rect", KIND_2D, 7, 10, 0.6, 3, 0.07),    # a non-square grid (d2v's generalisation)
    ("aud_250", KIND_1D, 1, 250, 0.5, 5, 0.05),    # audio base, 5 s
    ("aud_99", KIND_1D, 1, 99, 0.5, 5, 0.05),
    ("aud_49", KIND_1D, 1, 49, 0.55, 5, 0.1),      # audio large settings
    ("aud_even", KIND_1D, 1, 60, 0.5, 4, 0.05),
    ("txt_128", KIND_RANDOM, 1, 128, 0.48, 1, 0.0),
    ("txt_512", KIND_RANDOM, 1, 512, 0.48, 1, 0.0),
]


def count_cases():
    rows = [(KIND_2D, 14, 14, 0.8, 3, 0.07), (KIND_2D, 14, 14, 0.75, 3, 0.1),
            (KIND_1D, 1, 49, 0.5, 5, 0.05), (KIND_1D, 1, 99, 0.5, 5, 0.05),
            (KIND_1D, 1, 250, 0.5, 5, 0.05), (KIND_RANDOM, 1, 128, 0.48, 1, 0.0),
            (KIND_RANDOM, 1, 512, 0.48, 1, 0.0),
            # decimals whose float32 is on the other side of an integer product
            (KIND_RANDOM, 1, 10, 0.2, 1, 0.0), (KIND_2D, 2, 5, 0.2, 2, 0.0),
            (KIND_1D, 1, 10, 0.7, 2, 0.0), (KIND_1D, 1, 100, 0.29, 3, 0.0),
            (KIND_RANDOM, 1, 100, 0.57, 1, 0.0), (KIND_2D, 10, 10, 0.3, 3, 0.07)]
    rng = np.random.default_rng(7)
    for _ in range(400):
        kind = int(rng.integers(1, 4))
        R = int(rng.integers(0, 100)) / 100
        B = int(rng.integers(1, 8))
        A = int(rng.integers(0, 21)) / 100
        if kind == KIND_2D:
            H, W = int(rng.integers(1, 21)), int(rng.integers(1, 21))
        else:
            H, W = 1, int(rng.integers(1, 700))
        rows.append((kind, H, W, R, B, A))
    return rows


def main():
    if len(sys.argv) != 2:
        fail("usage: masks_v2_ref.py OUT.h5")
    rows = count_cases()
    out = {
        "kind": np.array([r[0] for r in rows], np.int32),
        "H": np.array([r[1] for r in rows], np.int32),
        "W": np.array([r[2] for r in rows], np.int32),
        "R": np.array([r[3] for r in rows], np.float64),
        "block": np.array([r[4] for r in rows], np.int32),
        "adjust": np.array([r[5] for r in rows], np.float64),
        "masked": np.array([expected_masked(*r) for r in rows], np.int32),
    }
    # The task's anchors: 157 of 196 (image base), int(T R) audio, T - int(0.52 T) text.
    for i, want in enumerate([157, 147, 24, 49, 125, 62, 246, 2, 2, 7, 28, 57, 30]):
        if out["masked"][i] != want:
            fail(f"count case {i}: {out['masked'][i]}, expected {want}")
    # Simulate the small cases too: every draw must hit the formula.
    rng = np.random.default_rng(11)
    for r, want in zip(rows, out["masked"]):
        kind, H, W, R, B, A = r
        for _ in range(3):
            if kind == KIND_2D:
                m = block2d_inverse(H, W, R, B, A, rng)
            elif kind == KIND_1D:
                m = block1d(W, R, B, A, rng)
            else:
                m = random_mask(W, R, rng)
            if int(m.sum()) != want:
                fail(f"count case {r}: simulated {int(m.sum())}, formula {want}")
    tmp = sys.argv[1] + ".tmp"
    with h5py.File(tmp, "w") as f:
        g = f.create_group("counts")
        for k, v in out.items():
            g.create_dataset(k, data=v)
        for seed, (name, kind, H, W, R, B, A) in enumerate(CONFIGS):
            attrs, ds = simulate(name, kind, H, W, R, B, A, 1000 + seed)
            g = f.create_group(name)
            for k, v in attrs.items():
                g.attrs[k] = v
            for k, v in ds.items():
                g.create_dataset(k, data=v)
    os.replace(tmp, sys.argv[1])
    print(f"wrote {sys.argv[1]}: {len(rows)} count cases, {len(CONFIGS)} configurations x "
          f"{DRAWS} draws")


if __name__ == "__main__":
    main()
