"""cuBLASLt configurations outside its heuristic's list, on the prefill products that add into the residual (perf-notes
v79). At 400 rows llama-2-7b's output and down projections (N = 4096) run one wave of 128 x 128 tiles, which cover
512 rows for 400; cuBLASLt's Hopper kernels also take tiles whose token side fits the row count (128 x 104 covers
416), but its heuristic never ranks them. This probe lists every algorithm id (lt_matmul.algorithm_ids), configures
each with every tile whose grid is close to one wave and every stage count it takes, keeps what cuBLASLt's check
accepts, screens them by a few back-to-back calls, tries cluster shapes, split-K and swizzling on the best, and
times the finalists against cuBLAS, torch's cuBLASLt path and the heuristic's list after a read of other memory, by
median (tune_timing), in alternating rounds, each checked against a float32 product.

Usage: PYTHONPATH=src:scripts python3 scripts/lt_tile_probe.py --out FILE [--rows 400] [--shapes wo,w_down]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from lt_algo_probe import SHAPES, lib_fn
from skinny_bench import write_rows

from rollgraph import lt_matmul
from rollgraph.blas_choice import BORROW_ROWS
from rollgraph.tune_timing import time_after_clean_reads

TILES = """
    1:8x8 2:8x16 3:16x8 4:8x32 5:16x16 6:32x8 7:8x64 8:16x32 9:32x16 10:64x8 11:32x32 12:32x64 13:64x32 14:32x128
    15:64x64 16:128x32 17:64x128 18:128x64 19:64x256 20:128x128 21:256x64 22:64x512 23:128x256 24:256x128 25:512x64
    26:64x96 27:96x64 28:96x128 29:128x160 30:160x128 31:192x128 32:128x192 33:128x96 34:32x256 35:256x32 36:8x128
    37:8x192 38:8x256 39:8x320 40:8x384 41:8x448 42:8x512 43:8x576 44:8x640 45:8x704 46:8x768 47:16x64 48:16x128
    49:16x192 50:16x256 51:16x320 52:16x384 53:16x448 54:16x512 55:16x576 56:16x640 57:16x704 58:16x768 59:24x64
    60:24x128 61:24x192 62:24x256 63:24x320 64:24x384 65:24x448 66:24x512 67:24x576 68:24x640 69:24x704 70:24x768
    71:32x192 72:32x320 73:32x384 74:32x448 75:32x512 76:32x576 77:32x640 78:32x704 79:32x768 80:40x64 81:40x128
    82:40x192 83:40x256 84:40x320 85:40x384 86:40x448 87:40x512 88:40x576 89:40x640 90:40x704 91:40x768 92:48x64
    93:48x128 94:48x192 95:48x256 96:48x320 97:48x384 98:48x448 99:48x512 100:48x576 101:48x640 102:48x704
    103:48x768 104:56x64 105:56x128 106:56x192 107:56x256 108:56x320 109:56x384 110:56x448 111:56x512 112:56x576
    113:56x640 114:56x704 115:56x768 116:64x192 117:64x320 118:64x384 119:64x448 120:64x576 121:64x640 122:64x704
    123:64x768 124:72x64 125:72x128 126:72x192 127:72x256 128:72x320 129:72x384 130:72x448 131:72x512 132:72x576
    133:72x640 134:80x64 135:80x128 136:80x192 137:80x256 138:80x320 139:80x384 140:80x448 141:80x512 142:80x576
    143:88x64 144:88x128 145:88x192 146:88x256 147:88x320 148:88x384 149:88x448 150:88x512 151:96x192 152:96x256
    153:96x320 154:96x384 155:96x448 156:96x512 157:104x64 158:104x128 159:104x192 160:104x256 161:104x320
    162:104x384 163:104x448 164:112x64 165:112x128 166:112x192 167:112x256 168:112x320 169:112x384 170:120x64
    171:120x128 172:120x192 173:120x256 174:120x320 175:120x384 176:128x320 177:128x384 178:136x64 179:136x128
    180:136x192 181:136x256 182:136x320 183:144x64 184:144x128 185:144x192 186:144x256 187:144x320 188:152x64
    189:152x128 190:152x192 191:152x256 192:152x320 193:160x64 194:160x192 195:160x256 196:168x64 197:168x128
    198:168x192 199:168x256 200:176x64 201:176x128 202:176x192 203:176x256 204:184x64 205:184x128 206:184x192
    207:184x256 208:192x64 209:192x192 210:192x256 211:200x64 212:200x128 213:200x192 214:208x64 215:208x128
    216:208x192 217:216x64 218:216x128 219:216x192 220:224x64 221:224x128 222:224x192 223:232x64 224:232x128
    225:232x192 226:240x64 227:240x128 228:240x192 229:248x64 230:248x128 231:248x192 232:256x192 233:264x64
    234:264x128 235:272x64 236:272x128 237:280x64 238:280x128 239:288x64 240:288x128 241:296x64 242:296x128
    243:304x64 244:304x128 245:312x64 246:312x128 247:320x64 248:320x128 249:328x64 250:328x128 251:336x64
    252:336x128 253:344x64 254:344x128 255:352x64 256:352x128 257:360x64 258:360x128 259:368x64 260:368x128
    261:376x64 262:376x128 263:384x64 264:384x128 265:392x64 266:400x64 267:408x64 268:416x64 269:424x64 270:432x64
    271:440x64 272:448x64 273:456x64 274:464x64 275:472x64 276:480x64 277:488x64 278:496x64 279:504x64 280:520x64
    281:528x64 282:536x64 283:544x64 284:552x64 285:560x64 286:568x64 287:576x64 288:584x64 289:592x64 290:600x64
    291:608x64 292:616x64 293:624x64 294:632x64 295:640x64 296:648x64 297:656x64 298:664x64 299:672x64 300:680x64
    301:688x64 302:696x64 303:704x64 304:712x64 305:720x64 306:728x64 307:736x64 308:744x64 309:752x64 310:760x64
    311:768x64 312:64x16 313:64x24 314:64x40 315:64x48 316:64x56 317:64x72 318:64x80 319:64x88 320:64x104
    321:64x112 322:64x120 323:64x136 324:64x144 325:64x152 326:64x160 327:64x168 328:64x176 329:64x184 330:64x200
    331:64x208 332:64x216 333:64x224 334:64x232 335:64x240 336:64x248 337:64x264 338:64x272 339:64x280 340:64x288
    341:64x296 342:64x304 343:64x312 344:64x328 345:64x336 346:64x344 347:64x352 348:64x360 349:64x368 350:64x376
    351:64x392 352:64x400 353:64x408 354:64x416 355:64x424 356:64x432 357:64x440 358:64x456 359:64x464 360:64x472
    361:64x480 362:64x488 363:64x496 364:64x504 365:64x520 366:64x528 367:64x536 368:64x544 369:64x552 370:64x560
    371:64x568 372:64x584 373:64x592 374:64x600 375:64x608 376:64x616 377:64x624 378:64x632 379:64x648 380:64x656
    381:64x664 382:64x672 383:64x680 384:64x688 385:64x696 386:64x712 387:64x720 388:64x728 389:64x736 390:64x744
    391:64x752 392:64x760 393:128x8 394:128x16 395:128x24 396:128x40 397:128x48 398:128x56 399:128x72 400:128x80
    401:128x88 402:128x104 403:128x112 404:128x120 405:128x136 406:128x144 407:128x152 408:128x168 409:128x176
    410:128x184 411:128x200 412:128x208 413:128x216 414:128x224 415:128x232 416:128x240 417:128x248 418:128x264
    419:128x272 420:128x280 421:128x288 422:128x296 423:128x304 424:128x312 425:128x328 426:128x336 427:128x344
    428:128x352 429:128x360 430:128x368 431:128x376 432:128x392 433:128x400 434:128x408 435:128x416 436:128x424
    437:128x432 438:128x440 439:128x448 440:128x456 441:128x464 442:128x472 443:128x480 444:128x488 445:128x496
    446:128x504 447:128x512 448:192x8 449:192x16 450:192x24 451:192x32 452:192x40 453:192x48 454:192x56 455:192x72
    456:192x80 457:192x88 458:192x96 459:192x104 460:192x112 461:192x120 462:192x136 463:192x144 464:192x152
    465:192x160 466:192x168 467:192x176 468:192x184 469:192x200 470:192x208 471:192x216 472:192x224 473:192x232
    474:192x240 475:192x248 476:192x264 477:192x272 478:192x280 479:192x288 480:192x296 481:192x304 482:192x312
    483:192x320 484:192x328 485:192x336 486:256x8 487:256x16 488:256x24 489:256x40 490:256x48 491:256x56 492:256x72
    493:256x80 494:256x88 495:256x96 496:256x104 497:256x112 498:256x120 499:256x136 500:256x144 501:256x152
    502:256x160 503:256x168 504:256x176 505:256x184 506:256x200 507:256x208 508:256x216 509:256x224 510:256x232
    511:256x240 512:256x248 513:256x256 514:320x8 515:320x16 516:320x24 517:320x32 518:320x40 519:320x48 520:320x56
    521:320x72 522:320x80 523:320x88 524:320x96 525:320x104 526:320x112 527:320x120 528:320x136 529:320x144
    530:320x152 531:320x160 532:320x168 533:320x176 534:320x184 535:320x192 536:320x200 537:384x8 538:384x16
    539:384x24 540:384x32 541:384x40 542:384x48 543:384x56 544:384x72 545:384x80 546:384x88 547:384x96 548:384x104
    549:384x112 550:384x120 551:384x136 552:384x144 553:384x152 554:384x160 555:384x168 556:448x8 557:448x16
    558:448x24 559:448x32 560:448x40 561:448x48 562:448x56 563:448x72 564:448x80 565:448x88 566:448x96 567:448x104
    568:448x112 569:448x120 570:448x128 571:448x136 572:448x144 573:512x8 574:512x16 575:512x24 576:512x32
    577:512x40 578:512x48 579:512x56 580:512x72 581:512x80 582:512x88 583:512x96 584:512x104 585:512x112
    586:512x120 587:512x128 588:576x8 589:576x16 590:576x24 591:576x32 592:576x40 593:576x48 594:576x56 595:576x72
    596:576x80 597:576x88 598:576x96 599:576x104 600:576x112 601:640x8 602:640x16 603:640x24 604:640x32 605:640x40
    606:640x48 607:640x56 608:640x72 609:640x80 610:640x88 611:640x96 612:704x8 613:704x16 614:704x24 615:704x32
    616:704x40 617:704x48 618:704x56 619:704x72 620:704x80 621:704x88 622:768x8 623:768x16 624:768x24 625:768x32
    626:768x40 627:768x48 628:768x56 629:768x72 630:768x80 631:256x512 632:256x1024 633:512x512 634:512x1024
"""
"""cublasLtMatmulTile_t id: tile (cuBLASLt's M x N: M over the weight's rows, N over the prompt's), from cublasLt.h."""
TILE = {int(i): tuple(int(d) for d in t.split("x")) for i, t in (e.split(":") for e in TILES.split())}
STAGES_AUTO = {32, 33, 34, 35, 36, 37}  # cublasLtMatmulStages_t 8xAUTO ... 256xAUTO
CLUSTERS = {"1x1x1": 2, "2x1x1": 3, "1x2x1": 5, "2x2x1": 6}


def tile_name(i: int) -> str:
    return "x".join(map(str, TILE[i])) if i in TILE else str(i)


def close_to_a_wave(tile: int, m: int, n: int, sms: int) -> bool:
    """Whether `tile` splits r[m, n] into about one or two waves with little padding on either side."""
    if tile not in TILE:
        return tile == 0
    tn, tm = TILE[tile]  # cuBLASLt's M is our n (the weight's rows), its N our m (the prompt's rows)
    if tn < 64 or tm < 32:
        return False
    ctas = math.ceil(n / tn) * math.ceil(m / tm)
    padding = math.ceil(m / tm) * tm / m * math.ceil(n / tn) * tn / n
    return padding <= 1.12 and sms // 2 <= ctas <= 2 * sms


def quick_us(prod, cand, r, x, w, calls: int = 6) -> float:
    """Mean µs of `calls` back-to-back runs after one (a screen, not a measurement)."""
    prod.run(cand, r, x, w)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(calls):
        prod.run(cand, r, x, w)
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1e3 / calls


def search(prod, r, x, w, sms: int, budget_s: float, log) -> dict[str, tuple]:
    """{name: (candidate, config, screen µs)} of every configuration cuBLASLt accepts and that ran. Each algorithm's
    tiles are tried from its defaults, and from a copy of each of the heuristic's candidates of that algorithm (its
    cluster shape and inner shape kept), with only the tile and stages changed."""
    m, n = prod.m, prod.n
    found: dict[str, tuple] = {}
    refused: dict[str, int] = {}
    t0 = time.perf_counter()
    caps = {}
    for algo_id in lt_matmul.algorithm_ids(prod.dtype):
        try:
            caps[algo_id] = lt_matmul.capabilities(algo_id, prod.dtype)
        except lt_matmul.CublasLtError as e:
            refused[f"capabilities: {e}"] = refused.get(f"capabilities: {e}", 0) + 1
    heur = prod.candidates(32, BORROW_ROWS)
    bases: list[tuple[str, int, object]] = [(f"a{i}", i, i) for i in caps]
    for c in heur:
        d = c.describe()
        if d.get("id") in caps:
            bases.append((f"h{c.rank}", d["id"], c))
    log(f"  {len(caps)} algorithms, {len(heur)} heuristic candidates: " + "; ".join(describe(c) for c in heur[:12]))

    def try_config(label: str, base, algo_id: int, config: dict) -> None:
        try:
            cand = prod.configured(base, **config)
            us = quick_us(prod, cand, r, x, w)
        except lt_matmul.CublasLtError as e:
            reason = str(e).split(" returned")[0] + " " + str(e).split()[-1]
            refused[reason] = refused.get(reason, 0) + 1
            return
        name = label + "/" + "/".join(f"{k}{tile_name(v) if k == 'tile' else v}" for k, v in config.items())
        found[name] = (cand, (algo_id, config), us)

    for label, algo_id, base in bases:
        cap = caps[algo_id]
        tiles = [t for t in cap["tiles"] if close_to_a_wave(t, m, n, sms)]
        stages = [s for s in cap["stages"] if s in STAGES_AUTO] or cap["stages"][:6] or [0]
        for tile in tiles:
            for st in stages:
                if time.perf_counter() - t0 > budget_s:
                    log(f"  search budget spent; refused: {refused}")
                    return found
                try_config(label, base, algo_id, {"tile": tile, "stages": st})
    log(f"  refused: {refused}")
    best = sorted(found.items(), key=lambda kv: kv[1][2])[:16]
    for name, (cand, (algo_id, _config), _us) in best:
        cap = caps[algo_id]
        variants = [{"cluster": c} for c in CLUSTERS.values()]
        if cap["split_k"]:
            variants += [
                {"split_k": sk, "reduction": red} for sk in (2, 3, 4) for red in (1, 2, 4) if cap["reductions"] & red
            ]
        if cap["swizzle"]:
            variants.append({"swizzle": 1})
        for v in variants:
            try_config(name, cand, algo_id, v)
    return found


def describe(c) -> str:
    d = c.describe()
    tile = tile_name(d.get("tile", 0))
    return f"h{c.rank}=a{d.get('id')}/{tile}/s{d.get('stages')}/c{d.get('cluster')}/k{d.get('split_k')}"


def screen_clean(prod, cands: dict, r, x, w, calls: int = 5) -> dict[str, float]:
    return {key: time_after_clean_reads(lambda c=c: prod.run(c, r, x, w), calls) * 1e3 for key, c in cands.items()}


def probe(name: str, m: int, n: int, k: int, accumulate: bool, finalists: int, budget_s: float, log) -> dict:
    torch.manual_seed(m)
    t0 = time.perf_counter()
    dev, dt = torch.device("cuda"), torch.bfloat16
    w = torch.randn(n, k, device=dev, dtype=dt) * 0.02
    x = torch.randn(m, k, device=dev, dtype=dt)
    r0 = torch.randn(m, n, device=dev, dtype=dt)
    want = ((r0.float() if accumulate else 0) + x.float() @ w.float().t()).to(dt).float()
    prod = lt_matmul.product(m, n, k, dt)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    r = r0.clone()
    found = search(prod, r, x, w, sms, budget_s, log)
    quick = {key: v[2] for key, v in found.items()}
    # back-to-back screening ranks differently from the clean timing that predicts the step (v65): the best 48 of it
    # are screened again after clean reads
    top = sorted(quick, key=quick.get)[:48]
    screen = {key: round(v, 2) for key, v in screen_clean(prod, {k: found[k][0] for k in top}, r, x, w).items()}
    heur_list = prod.candidates(32, BORROW_ROWS)
    heur = {f"heur{c.rank}": c for c in heur_list}
    heur_screen = screen_clean(prod, heur, r, x, w)
    fns = {"cublas": lib_fn("cublas", accumulate), "cublaslt": lib_fn("cublaslt", accumulate)}
    for key in sorted(heur_screen, key=heur_screen.get)[:3]:
        fns[key] = lambda r, x, w, c=heur[key]: prod.run(c, r, x, w, accumulate)
    for key in sorted(screen, key=screen.get)[:finalists]:
        fns[key] = lambda r, x, w, c=found[key][0]: prod.run(c, r, x, w, accumulate)
    errors = {}
    for key, fn in fns.items():
        rr = r0.clone()
        fn(rr, x, w)
        torch.cuda.synchronize()
        errors[key] = round((rr.float() - want).abs().max().item(), 4)
    times: dict[str, list[float]] = {key: [] for key in fns}
    for rnd in range(3):
        for key in list(fns) if rnd % 2 == 0 else list(reversed(fns)):
            times[key].append(time_after_clean_reads(lambda fn=fns[key]: fn(r, x, w)) * 1e3)
    med = {key: round(statistics.median(v), 2) for key, v in times.items()}
    fastest = min(med, key=med.get)
    return {
        "product": name,
        "rows": m,
        "n": n,
        "k": k,
        "configs_accepted": len(found),
        "clean_us": dict(sorted(med.items(), key=lambda kv: kv[1])),
        "max_abs_error": errors,
        "fastest": fastest,
        "tflops_fastest": round(2 * m * n * k / med[fastest] / 1e6, 1),
        "screen_top": dict(sorted(screen.items(), key=lambda kv: kv[1])[:40]),
        "heuristic_screen": {key: round(v, 2) for key, v in sorted(heur_screen.items(), key=lambda kv: kv[1])},
        "heuristic": [describe(c) for c in heur_list],
        "quick_top": {key: round(quick[key], 2) for key in top},
        "finalist_configs": {key: found[key][1] for key in fns if key in found},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", default="400")
    p.add_argument("--shapes", default="w_down,wo")
    p.add_argument("--finalists", type=int, default=8)
    p.add_argument("--budget-s", type=float, default=60.0, help="seconds of configuration search per shape")
    a = p.parse_args()
    out = []

    def log(msg: str) -> None:
        print(msg, flush=True)

    for name in a.shapes.split(","):
        n, k, accumulate = SHAPES[name]
        for m in [int(s) for s in a.rows.split(",")]:
            log(f"{name} rows={m}")
            row = probe(name, m, n, k, accumulate, a.finalists, a.budget_s, log)
            out.append(row)
            log(
                f"{name} rows={m}: {row['configs_accepted']} configs; clean µs {row['clean_us']}; "
                f"errors {row['max_abs_error']}; {row['seconds']} s"
            )
            write_rows(a.out, out)


if __name__ == "__main__":
    main()
