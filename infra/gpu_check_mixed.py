"""gpu-check's mixed_run step: ``stylize run`` inline (Ray hidden) over a collection of mixed
sizes and aspect ratios, against ``stylize bench`` at the same settings in the same process.

    python infra/gpu_check_mixed.py CPU WORK    # CPU: 1 for the tiny CPU dry run, else 0

Prints its figures as JSON lines (gpu_check_results.cmd_step records the last one)."""

import json
import os
import sys
import time

# The collection's aspect ratios (width:height), each shard's mix of them: five ratios on
# three aspect buckets (5:4 snaps onto 4:3's, 4:5 onto 3:4's; images.bucket_shape), equal
# numbers per bucket. Each bucket is one more shape for torch.compile (25-35 s on an H200),
# hence three, not more, in an 8-minute check.
SHARD_MIX = ((1, 1), (1, 1), (4, 3), (5, 4), (3, 4), (4, 5))
RATIOS = tuple(dict.fromkeys(SHARD_MIX))
CONTENT_SAMPLES = ("tubingen", "coffee", "chelsea", "shipwreck", "the_scream")


def _hide_ray():
    """Make `import ray` fail, as on a machine without it."""
    import importlib.abc

    class NoRay(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoRay())


def _make_collection(folder, n, per_shard, sides, seed=0):
    """N JPEGs cropped from the bundled photos: every shard of ``per_shard`` (consecutive
    names; a multiple of len(SHARD_MIX)) holds SHARD_MIX's ratios in its proportions, shuffled
    within the shard; longest side drawn from ``sides``. Returns [(name, width, height)]."""
    import io
    import random
    from concurrent.futures import ThreadPoolExecutor
    from importlib import resources

    from PIL import Image

    folder_in = resources.files("stylize") / "samples"
    photos = [
        Image.open(io.BytesIO((folder_in / f"{s}.jpg").read_bytes())).convert("RGB")
        for s in CONTENT_SAMPLES
    ]
    rng = random.Random(seed)
    plan = []
    for first in range(0, n, per_shard):
        block = [
            (SHARD_MIX[i % len(SHARD_MIX)], rng.randint(*sides))
            for i in range(min(per_shard, n - first))
        ]
        rng.shuffle(block)
        plan += block

    def make(i):
        (a, b), longest = plan[i]
        photo = photos[i % len(photos)]
        r = random.Random(seed * 100003 + i)
        cw = min(photo.width, photo.height * a / b)  # the largest a:b crop, at a random place
        cw, ch = int(cw), int(cw * b / a)
        left, top = r.randint(0, photo.width - cw), r.randint(0, photo.height - ch)
        w, h = (longest, round(longest * b / a)) if a >= b else (round(longest * a / b), longest)
        img = photo.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)
        name = f"{i:04d}_{CONTENT_SAMPLES[i % len(photos)]}_{a}x{b}.jpg"
        img.save(os.path.join(folder, name), quality=92)
        return name, w, h

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(make, range(n)))


def cmd_mixed(cpu, work):
    """`stylize run` with ray.address: inline (Ray hidden, as on a machine without it) over a
    collection of mixed sizes and aspect ratios, and `stylize bench` at the same settings
    (preset, size, iterations, precision, compile, init) measured first in this process:
    images/hour of both, and the GPU's idle share, for the whole run and once every aspect
    bucket is compiled."""
    import collections
    import gc
    import shutil
    import threading

    _hide_ray()
    try:
        import pipeline.cli
        import pipeline.driver  # noqa: F401
        import pipeline.worker as worker_mod
    except Exception as e:  # noqa: BLE001
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        print(
            json.dumps(
                {
                    "status": f"skipped: the pipeline does not import without Ray ({msg})",
                    "ray_hidden": True,
                }
            )
        )
        return 0
    import torch
    import yaml

    import stylize.engine as engine_mod
    from pipeline import bench_cmd
    from stylize.bench import bench, dynamo_graphs
    from stylize.images import bucket_shape

    cuda = cpu != "1" and torch.cuda.is_available()
    # per bucket and shard: 16 = the worker's batch (batch_size 0) = the bench's batch
    if cuda:
        size, iterations, per_bucket, shards, sides, bench_n, repeats = (
            512,
            100,
            16,
            5,
            (300, 1200),
            16,
            2,
        )
    else:
        size, iterations, per_bucket, shards, sides, bench_n, repeats = 32, 2, 2, 2, (40, 96), 2, 1
    device, precision = ("cuda", "bf16") if cuda else ("cpu", "fp32")
    shard_size = per_bucket * len(SHARD_MIX) // 2  # SHARD_MIX: two slots per bucket
    n = shard_size * shards

    # 1. the bench at the same settings (square crops of the same photos)
    argv = [
        "--preset",
        "gatys2016",
        "--size",
        str(size),
        "--iterations",
        str(iterations),
        "--images",
        str(bench_n),
        "--batch",
        "0",
        "--baseline-images",
        "0",
        "--init",
        "noise",
        "--device",
        device,
        "--precision",
        precision,
        "--repeats",
        str(repeats),
    ] + (["--compile"] if cuda else ["--warmup", "1"])
    t0 = time.perf_counter()
    b = bench(bench_cmd.parse_options(argv)[0])
    bench_s = time.perf_counter() - t0
    result = {
        "images": n,
        "size": size,
        "preset": "gatys2016",
        "iterations": iterations,
        "precision": precision,
        "compile": cuda,
        "device": device,
        "bucket": True,
        "shard_size": shard_size,
        "per_bucket_and_shard": per_bucket,
        "ray_hidden": True,
        "bench": {
            k: b.get(k)
            for k in (
                "images",
                "batch",
                "repeats",
                "ms_per_image_iter",
                "images_per_hour",
                "warmup_s",
                "graphs_compiled_warmup",
                "graphs_compiled_timed",
                "compiled",
                "final_loss",
            )
        }
        | {"step_s": round(bench_s, 1), "command": "stylize bench " + " ".join(argv)},
    }
    print(json.dumps(result), flush=True)  # the bench's figures, should the run not finish
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    # 2. the collection, and the job
    root = os.path.join(work, "mixed")
    shutil.rmtree(root, ignore_errors=True)
    inp, out = os.path.join(root, "in"), os.path.join(root, "out")
    os.makedirs(inp)
    t0 = time.perf_counter()
    files = _make_collection(inp, n, shard_size, sides)
    buckets = collections.Counter("{}x{}".format(*bucket_shape(w, h, size)) for _, w, h in files)
    result.update(
        make_inputs_s=round(time.perf_counter() - t0, 1),
        ratios=[f"{a}:{b}" for a, b in RATIOS],
        longest_side_px=[min(max(w, h) for _, w, h in files), max(max(w, h) for _, w, h in files)],
        input_mb=round(sum(os.path.getsize(os.path.join(inp, f)) for f, _, _ in files) / 2**20, 1),
        buckets=dict(buckets),
    )
    stylize_opts = {
        "preset": "gatys2016",
        "size": size,
        "iterations": iterations,
        "device": device,
        "precision": precision,
        "compile": cuda,
    }
    job = {
        "input": inp,
        "output": out,
        "styles": {"starry_night": "pkg://stylize/samples/starry_night.jpg"},
        "stylize": stylize_opts,
        "shard_size": shard_size,
        "mode": "overwrite",
        "ray": {"address": "inline"},
        "grid": False,
    }
    job_path = os.path.join(root, "job.yaml")
    with open(job_path, "w") as f:
        yaml.safe_dump(job, f)

    # 3. the run, with every engine call (its images, shape, graphs compiled) and every
    # worker call (read + decode, stylize + write) timed
    calls, phases = [], []
    originals = {
        "stylize_batch": engine_mod.Stylizer.stylize_batch,
        "prepare": worker_mod.StyleWorker.prepare,
        "run_batch": worker_mod.StyleWorker.run_batch,
    }

    def stylize_batch(self, contents, *args, **kwargs):
        g0, s = dynamo_graphs(), time.perf_counter()
        try:
            return originals["stylize_batch"](self, contents, *args, **kwargs)
        finally:
            g1 = dynamo_graphs()
            shape = tuple(int(v) for v in contents[0].shape[-2:]) if len(contents) else (0, 0)
            calls.append(
                (s, time.perf_counter(), len(contents), shape, None if g0 is None else g1 - g0)
            )
            print(
                f"mixed_run: engine call {shape[1]}x{shape[0]} x {len(contents)}: "
                f"{calls[-1][1] - s:.2f} s, {calls[-1][4]} graphs compiled",
                file=sys.stderr,
                flush=True,
            )

    def timed_phase(name):
        def call(self, *args, **kwargs):
            s = time.perf_counter()
            try:
                return originals[name](self, *args, **kwargs)
            finally:
                phases.append((name, s, time.perf_counter()))

        return call

    engine_mod.Stylizer.stylize_batch = stylize_batch
    worker_mod.StyleWorker.prepare = timed_phase("prepare")
    worker_mod.StyleWorker.run_batch = timed_phase("run_batch")
    util, stop = [], threading.Event()

    def sample_utilisation():  # NVML's "a kernel ran" share, every 50 ms
        while not stop.is_set():
            try:
                util.append((time.perf_counter(), torch.cuda.utilization(0)))
            except Exception:  # noqa: BLE001 - no NVML: no second opinion
                return
            stop.wait(0.05)

    sampler = threading.Thread(target=sample_utilisation, daemon=True)
    if cuda:
        sampler.start()
    t0 = time.perf_counter()
    try:
        rc = pipeline.cli.main(["run", job_path])
    finally:
        t1 = time.perf_counter()
        stop.set()
        engine_mod.Stylizer.stylize_batch = originals["stylize_batch"]
        worker_mod.StyleWorker.prepare = originals["prepare"]
        worker_mod.StyleWorker.run_batch = originals["run_batch"]
    wall = t1 - t0
    result.update(exit_code=rc, wall_s=round(wall, 3))
    try:
        with open(os.path.join(out, "run.json")) as f:
            run = json.load(f)
        result["run_s"] = run.get("timings", {}).get("run_s")
        result["run_json_images_per_hour"] = run.get("timings", {}).get("images_per_hour")
        result["counts"] = run.get("items", {}).get("by_status")
    except Exception as e:  # noqa: BLE001
        result["run_json_error"] = f"{type(e).__name__}: {e}"
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(os.path.join(out, "manifest.parquet")).to_pylist()
        result["mean_iterations"] = round(
            sum(int(r.get("iterations") or 0) for r in rows) / max(len(rows), 1), 1
        )
    except Exception as e:  # noqa: BLE001
        result["manifest_error"] = f"{type(e).__name__}: {e}"
    done = (result.get("counts") or {}).get("ok", 0)

    # 4. the figures. Whole run: the command's wall time (loading VGG-19, listing, compiling
    # each bucket, the report). Once compiled: from the first shard's read to the last
    # batch's write, less the engine calls that compiled a graph, and their images.
    busy = sum(e - s for s, e, *_ in calls)
    compiling = [c for c in calls if c[4]]
    compile_s = sum(e - s for s, e, *_ in compiling)
    graphs = sum(c[4] or 0 for c in calls) if calls and calls[0][4] is not None else None
    result.update(
        images_per_hour=round(3600 * done / wall, 1) if wall else None,
        engine_calls=len(calls),
        batches=dict(sorted(collections.Counter(c[2] for c in calls).items())),
        graphs_compiled=graphs,
        compiling_calls=len(compiling),
        compiling_calls_s=round(compile_s, 2),
        first_engine_call_after_s=round(calls[0][0] - t0, 3) if calls else None,
        gpu_busy_s=round(busy, 3),
        gpu_idle_share=round(max(0.0, 1 - busy / wall), 4),
    )
    if calls and phases:
        first = min(s for _, s, _ in phases)
        last = (
            max(e for name, _, e in phases if name == "run_batch")
            if any(p[0] == "run_batch" for p in phases)
            else calls[-1][1]
        )
        steady_s = (last - first) - compile_s
        steady_images = done - sum(c[2] for c in compiling)
        steady_calls = [c for c in calls if not c[4]]
        px = sum(c[2] * c[3][0] * c[3][1] for c in steady_calls)
        mean_px = px / max(sum(c[2] for c in steady_calls), 1)
        steady_iph = 3600 * steady_images / steady_s if steady_s > 0 and steady_images > 0 else None
        bench_iph = b.get("images_per_hour")
        result.update(
            steady_window_s=round(last - first, 3),
            steady_s=round(steady_s, 3),
            steady_images=steady_images,
            steady_images_per_hour=None if steady_iph is None else round(steady_iph, 1),
            steady_gpu_idle_share=round(max(0.0, 1 - (busy - compile_s) / steady_s), 4)
            if steady_s > 0
            else None,
            steady_ms_per_image_iter_engine=round(
                1000 * (busy - compile_s) / max(steady_images * iterations, 1), 4
            ),
            pixels_vs_bench=round(mean_px / (size * size), 4),
            ratio=round(steady_iph / bench_iph, 4) if steady_iph and bench_iph else None,
            ratio_whole_run=round(result["images_per_hour"] / bench_iph, 4)
            if bench_iph and result["images_per_hour"]
            else None,
            ratio_per_pixel=round(steady_iph * mean_px / (bench_iph * size * size), 4)
            if steady_iph and bench_iph
            else None,
        )
        window = [
            u
            for t, u in util
            if first <= t <= last and not any(s <= t <= e for s, e, *_ in compiling)
        ]
        if window:  # NVML's share of 50 ms samples in which no kernel ran, compiling left out
            result["nvml_idle_share_steady"] = round(sum(u == 0 for u in window) / len(window), 4)
            result["nvml_mean_utilisation_steady"] = round(sum(window) / len(window), 1)
    print(json.dumps(result))
    return 0 if rc == 0 and done == n else 1


if __name__ == "__main__":
    sys.exit(cmd_mixed(*sys.argv[1:]) or 0)
