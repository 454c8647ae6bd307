import torch
from rollgraph import blas_choice, lt_matmul
for (m, n, k) in [(400, 4096, 11008), (256, 2048, 8192)]:
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    prod = lt_matmul.product(m, n, k, torch.bfloat16)
    cands = prod.candidates(borrow_rows=blas_choice.BORROW_ROWS)
    print(m, n, k, "caps66", {kk: v for kk, v in lt_matmul.capabilities(66, torch.bfloat16).items() if kk != "tiles"})
    shown = 0
    for c in cands:
        d = c.describe()
        if d.get("split_k", 1) > 1 and shown < 4:
            shown += 1
            print(" base", d)
            for sch in (0, 1, 2, 4):
                for extra in ({}, {"split_k": d["split_k"]}):
                    try:
                        cp = prod.configured(c, reduction=sch, **extra)
                        print("   ok", sch, extra, cp.describe(), bytes(cp.algo) == bytes(c.algo))
                    except lt_matmul.CublasLtError as e:
                        print("   refused", sch, extra, e)
