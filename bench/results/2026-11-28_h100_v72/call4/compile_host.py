# Where `compile` mode's (no graphs) decode step spends its host time on 7B, at 10- and 400-token prompts: ITL,
# device time and kernels a token, the host's top ops by self CPU time, dynamo's recompiles. Variant (argv[1]):
# as-is | static (inductor's static CUDA launcher on, as torch >= 2.12 would) | nodyn (automatic dynamic shapes off).
import json, sys, time
import torch
sys.path.insert(0, "scripts")
from pool_figures import engine_config, set_knobs
from torch.profiler import ProfilerActivity, profile
from rollgraph import steps
from rollgraph.config import ModelConfig
from rollgraph.engine import Engine
from rollgraph.models import load_model
from rollgraph.params import GenerationParams

variant, out = sys.argv[1], sys.argv[2]
if variant == "static":
    steps.static_launcher_keeps_tuning = lambda version: True
if variant == "nodyn":
    torch._dynamo.config.automatic_dynamic_shapes = False
set_knobs("compile")
t0 = time.perf_counter()
engine = Engine(load_model(ModelConfig("llama-2-7b", dtype="bfloat16")), engine_config("compile"))
engine.warm_up(progress=False)
res = {"variant": variant, "warm_up_s": round(time.perf_counter() - t0, 1)}
from torch._dynamo.utils import counters
for n in (10, 400):
    ids = tuple((7 * i) % 1000 + 3 for i in range(n))
    for _ in range(2):
        gen = engine.generate(GenerationParams(ids, 65))
        for _ in gen:
            pass
    itl_plain = sorted(gen.result.step_ms)[len(gen.result.step_ms) // 2]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        gen = engine.generate(GenerationParams(ids, 33))
        for _ in gen:
            pass
        torch.cuda.synchronize()
    dev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    avg = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:25]
    res[n] = {
        "itl_median_ms": itl_plain,
        "itl_profiled_ms": sorted(gen.result.step_ms)[len(gen.result.step_ms) // 2],
        "kernels_per_token": round(len(dev) / 33, 1),
        "device_us_per_token": round(sum(e.device_time_total for e in dev) / 33, 1),
        "host_top": [(a.key[:70], a.count, round(a.self_cpu_time_total / 33, 1)) for a in avg],
    }
res["counters"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "inductor")}
json.dump(res, open(out, "w"), indent=1, default=str)
for n in (10, 400):
    r = res[n]
    print(variant, n, "ITL", r["itl_median_ms"], "profiled", r["itl_profiled_ms"], "kernels", r["kernels_per_token"],
          "device us", r["device_us_per_token"])
    for row in r["host_top"][:12]:
        print("   ", row)
print(variant, "warm-up", res["warm_up_s"], "s; stats", res["counters"].get("stats"))
