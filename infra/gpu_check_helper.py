"""Helper of infra/gpu-check.sh: step records, the mixed run, the summary (stdlib only,
except the mixed run)."""

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET


def results_path():
    """The results file of this run (gpu-check.sh exports GPU_CHECK_JSONL)."""
    return os.environ["GPU_CHECK_JSONL"]


def append(line):
    with open(results_path(), "a", encoding="utf-8") as f:
        f.write(json.dumps(line, default=str) + "\n")


def read_lines():
    out = []
    try:
        with open(results_path(), encoding="utf-8") as f:
            for raw in f:
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def last_json(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None, []
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line), lines
            except ValueError:
                continue
    return None, lines


def status_of(rc):
    rc = int(rc)
    if rc == 0:
        return "ok"
    if rc in (124, 137):
        return f"timeout (rc {rc})"
    return f"failed (rc {rc})"


def cmd_step(name, rc, seconds, log, command=""):
    """A step's record: its status, duration and the last JSON line it printed."""
    data, lines = last_json(log)
    data = dict(data or {})
    status = status_of(rc)
    if status == "ok" and str(data.get("status", "ok")).startswith("skipped"):
        status = data["status"]
    data.pop("status", None)
    line = {"step": name, "status": status, **data, "step_s": round(float(seconds), 1)}
    if command:
        line["command"] = command
    if not status.startswith(("ok", "skipped")):
        line["output_tail"] = lines[-25:]
    append(line)


def cmd_skip(name, reason):
    append({"step": name, "status": f"skipped: {reason}"})


def cmd_pytest(rc, seconds, xml_path, log, command=""):
    """pytest's outcome per test (from its JUnit XML) as one record."""
    tests, outcomes = [], {}
    try:
        root = ET.parse(xml_path).getroot()
        for case in root.iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error"}.get(child.tag, "skipped")
                    message = (child.get("message") or child.text or "").strip()
                    message = " ".join(message.split())[:400]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            tests.append(
                {
                    "name": case.get("name"),
                    "outcome": outcome,
                    "seconds": round(float(case.get("time") or 0), 2),
                    **({"message": message} if message else {}),
                }
            )
    except (OSError, ET.ParseError) as e:
        tests.append({"name": "(junit xml)", "outcome": "error", "message": str(e)})
    status = status_of(rc)
    if int(rc) == 5:  # no tests collected / all deselected
        status = "failed (rc 5: no tests ran)"
    line = {
        "step": "pytest",
        "status": status,
        "step_s": round(float(seconds), 1),
        "outcomes": outcomes,
        "tests": tests,
    }
    if command:
        line["command"] = command
    if not status.startswith("ok"):
        _, lines = last_json(log)
        line["output_tail"] = lines[-25:]
    append(line)


def cmd_env(cpu):
    info = {
        "step": "env",
        "mode": "cpu dry run" if cpu == "1" else "gpu",
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        info.update(
            torch=torch.__version__,
            cuda=torch.version.cuda,
            cuda_available=torch.cuda.is_available(),
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        )
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(
                gpu=p.name,
                gpu_memory_mib=round(p.total_memory / 2**20),
                multiprocessors=p.multi_processor_count,
                bf16=torch.cuda.is_bf16_supported(),
                cudnn_allow_tf32_default=torch.backends.cudnn.allow_tf32,
            )
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception:  # noqa: BLE001
        pass
    for cmd, key in (
        (
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                "--format=csv,noheader",
            ],
            "nvidia_smi",
        ),
        (["git", "-C", os.environ.get("REPO", "."), "rev-parse", "--short", "HEAD"], "commit"),
    ):
        try:
            info[key] = (
                subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
                or None
            )
        except Exception:  # noqa: BLE001
            info[key] = None
    append(info)
    print(json.dumps(info))


# ------------------------------------------------------------------------------- mixed run

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
    from stylize import bench as bench_mod
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
    b = bench_mod.bench(bench_mod.build_parser().parse_args(argv))
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
        | {"step_s": round(bench_s, 1), "command": "stylize.bench " + " ".join(argv)},
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
        g0, s = bench_mod.dynamo_graphs(), time.perf_counter()
        try:
            return originals["stylize_batch"](self, contents, *args, **kwargs)
        finally:
            g1 = bench_mod.dynamo_graphs()
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


# --------------------------------------------------------------------------------- summary

# shared/PERF.md, "Targets" (H100/H200)
TARGET_MS_512 = 1.2  # ms per image-iteration, 512x512
TARGET_IMAGES_PER_HOUR = 6000  # 512x512 at 500 iterations (= 1.2 ms)
TARGET_MS_HISTORY100 = 1.5
TARGET_MS_1024 = 8.0
TARGET_IMAGES_PER_HOUR_224 = 50000  # 224x224 at 300 iterations
TARGET_MIXED_RATIO = 0.9  # the pipeline on mixed sizes against the bench
LOSS_TOLERANCE = 0.01  # final loss within 1% of strict fp32 at equal iterations
TARGET_STEPS = ("bench_512", "bench_history100", "bench_1024", "bench_224", "mixed_run")


def verdict(ok):
    return "UNKNOWN" if ok is None else "MET" if ok else "NOT MET"


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def preset_note(preset):
    """What a preset sets besides the history, against gatys2016 (for bench_history100)."""
    try:
        from stylize.config import PRESETS, StyleConfig

        base = StyleConfig()
        bench_sets = ("iterations", "init", "noise_scale", "noise_spectrum")  # its own flags
        diff = {
            k: v
            for k, v in PRESETS[preset].items()
            if k not in ("history_size", *bench_sets) and getattr(base, k, None) != v
        }
        parts = ", ".join(f"{k} {list(v) if isinstance(v, tuple) else v}" for k, v in diff.items())
    except Exception:  # noqa: BLE001 - the summary is written whatever the tree
        parts = "(its other settings could not be read)"
    return (
        f"besides history_size 100, {preset} sets {parts} (its init and iterations are the "
        f"bench's: content, and the steps above). Max pooling is another network (another "
        f"compiled graph) and the TV term costs little: the time per step is comparable "
        f"with bench_512's but for the history; the losses are not"
    )


def bench_line(x):
    s = (
        f"{x['step']}: {x.get('preset')} {x.get('size')}px x {x.get('iterations')} it, "
        f"{x.get('images')} images, batch {x.get('batch')}, {x.get('precision')}"
        f"{' compiled' if x.get('compiled') else ' eager'}: "
        f"{fmt(x.get('ms_per_image_iter'))} ms/image-iteration, "
        f"{fmt(x.get('images_per_hour'))} images/h at {x.get('iterations')} it; "
    )
    if x.get("baseline_images"):
        s += (
            f"baseline {fmt(x.get('baseline_ms_per_image_iter'))} ms "
            f"({x.get('baseline_images')} images) -> {fmt(x.get('speedup'))}x; "
            f"loss ratio {fmt(x.get('loss_ratio'), 4)}; "
        )
    else:
        s += "no baseline; "
    return s + (
        f"peak {fmt(x.get('peak_memory_mb'))} MiB; warm-up {fmt(x.get('warmup_s'))} s "
        f"({x.get('graphs_compiled_warmup')} graphs, {x.get('graphs_compiled_timed')} "
        f"more while timed)"
    )


def mixed_lines(x):
    b = x.get("bench") or {}
    buckets = ", ".join(f"{k} {v}" for k, v in (x.get("buckets") or {}).items())
    lo_hi = x.get("longest_side_px") or ["?", "?"]
    what = (
        f"mixed_run: `stylize run` inline (Ray hidden), {x.get('images')} photos of "
        f"{len(x.get('ratios') or [])} aspect ratios ({', '.join(x.get('ratios') or [])}), "
        f"longest side {lo_hi[0]}-{lo_hi[1]} px, {x.get('preset')} at {x.get('size')} px "
        f"(bucket on: {buckets}), {x.get('iterations')} it, {x.get('precision')}"
        f"{' compiled' if x.get('compile') else ' eager'}, shards of {x.get('shard_size')} "
        f"({x.get('per_bucket_and_shard')} per bucket), batches {x.get('batches')}; "
        f"counts {x.get('counts')}"
    )
    whole = (
        f"  whole run: {fmt(x.get('wall_s'))} s, {fmt(x.get('images_per_hour'))} images/h "
        f"({x.get('graphs_compiled')} graphs compiled in {x.get('compiling_calls')} engine "
        f"calls, {fmt(x.get('compiling_calls_s'))} s; first engine call after "
        f"{fmt(x.get('first_engine_call_after_s'))} s); GPU idle "
        f"{fmt(100 * (x.get('gpu_idle_share') or 0))}%"
    )
    steady = (
        f"  once compiled (first read to last write, {fmt(x.get('steady_s'))} s without the "
        f"compiling calls, {x.get('steady_images')} images): "
        f"{fmt(x.get('steady_images_per_hour'))} images/h, "
        f"{fmt(x.get('steady_ms_per_image_iter_engine'))} ms/image-iteration in the engine, "
        f"GPU idle {fmt(100 * (x.get('steady_gpu_idle_share') or 0))}% "
        f"(NVML: no kernel in {fmt(x.get('nvml_idle_share_steady'))} of its 50 ms samples)"
    )
    bench = (
        f"  bench, same settings, same process ({b.get('images')} squares {x.get('size')}px, "
        f"batch {b.get('batch')}, median of {b.get('repeats')}): "
        f"{fmt(b.get('ms_per_image_iter'))} ms/image-iteration, "
        f"{fmt(b.get('images_per_hour'))} images/h -> ratio {fmt(x.get('ratio'), 3)} once "
        f"compiled ({fmt(x.get('ratio_whole_run'), 3)} whole run; per pixel "
        f"{fmt(x.get('ratio_per_pixel'), 3)}: the mixed images have "
        f"{fmt(x.get('pixels_vs_bench'), 3)}x the bench's pixels)"
    )
    return [what, whole, steady, bench]


def cmd_summary(out_dir, elapsed):  # noqa: C901 - one verdict per target; split when the targets change
    lines = read_lines()
    steps = [x for x in lines if "status" in x]
    env = next((x for x in lines if x.get("step") == "env"), {})
    text = []
    where = env.get("gpu") or ("CPU dry run" if env.get("mode") == "cpu dry run" else "no GPU")
    text.append(
        f"gpu-check: {where}; torch {env.get('torch')} (CUDA {env.get('cuda')}), "
        f"python {env.get('python')}, commit {env.get('commit')}, "
        f"{env.get('date_utc')}, {elapsed} s in all"
    )
    text.append(
        "steps: "
        + "; ".join(
            f"{x['step']} {x['status']}{' (%ss)' % x['step_s'] if 'step_s' in x else ''}"
            for x in steps
        )
    )
    gpu = env.get("mode") == "gpu"
    checks = []

    def loss_check(x, what):
        if x.get("loss_ratio") is not None and gpu:
            name = f"{what} final loss <= {1 + LOSS_TOLERANCE:g} x strict fp32"
            checks.append((name, x["loss_ratio"], x["loss_ratio"] <= 1 + LOSS_TOLERANCE))

    for x in steps:
        if not (x["step"].startswith("bench_") and x["status"] == "ok"):
            continue
        text.append(bench_line(x))
        if x["step"] == "bench_history100":
            text.append(f"  note: {preset_note(x.get('preset') or 'neural-style')}")
        prof = x.get("profile")
        if prof:
            phases = ", ".join(
                f"{k} {fmt(v, 3)}" for k, v in prof.get("phases_ms_per_image_iter", {}).items()
            )
            busy = prof.get("device_busy_share")
            top = "; ".join(
                f"{k['name'][:60]} {round(100 * k['share'])}%" for k in prof.get("top", [])[:5]
            )
            text.append(
                f"  profile ({prof.get('iterations')} steps of {prof.get('images')} "
                f"images): {fmt(prof.get('wall_ms_per_image_iter'), 3)} ms/image-"
                f"iteration; {phases} ms; device busy "
                f"{'?' if busy is None else f'{100 * busy:.0f}%'}; top: {top}"
            )
        if not gpu:
            continue
        ms = x.get("ms_per_image_iter")
        if x["step"] == "bench_512":
            checks.append(
                (f"512px ms/image-iteration <= {TARGET_MS_512}", ms, (ms or 1e9) <= TARGET_MS_512)
            )
            ipm = 3.6e6 / (ms * 500) if ms else None
            checks.append(
                (
                    f"512px images per GPU-hour at 500 it >= {TARGET_IMAGES_PER_HOUR:,}",
                    ipm and round(ipm),
                    (ipm or 0) >= TARGET_IMAGES_PER_HOUR,
                )
            )
            loss_check(x, "bench_512 (bf16 + compile, 500 it)")
        elif x["step"] == "bench_history100":
            name = f"history 100 (neural-style) 512px ms/image-iteration <= {TARGET_MS_HISTORY100}"
            checks.append((name, ms, (ms or 1e9) <= TARGET_MS_HISTORY100))
        elif x["step"] == "bench_1024":
            checks.append(
                (
                    f"1024px ms/image-iteration <= {TARGET_MS_1024:g}",
                    ms,
                    (ms or 1e9) <= TARGET_MS_1024,
                )
            )
            loss_check(x, "bench_1024")
        elif x["step"] == "bench_224":
            iph = (
                x.get("images_per_hour")
                if x.get("iterations") == 300
                else (3.6e6 / (ms * 300) if ms else None)
            )
            name = f"224px images per GPU-hour at 300 it >= {TARGET_IMAGES_PER_HOUR_224:,}"
            checks.append((name, iph and round(iph), (iph or 0) >= TARGET_IMAGES_PER_HOUR_224))
            loss_check(x, "bench_224")
    mixed = next((x for x in steps if x["step"] == "mixed_run"), None)
    if mixed:
        if mixed["status"] == "ok" or mixed.get("ratio") is not None:
            text += mixed_lines(mixed)
            if mixed["status"] != "ok":
                text.append(f"  mixed_run: {mixed['status']}")
            if gpu:
                ratio = mixed.get("ratio")
                name = f"mixed_run / bench images/hour >= {TARGET_MIXED_RATIO} (once compiled)"
                checks.append((name, ratio, None if ratio is None else ratio >= TARGET_MIXED_RATIO))
        else:
            b = mixed.get("bench") or {}
            text.append(
                f"mixed_run: {mixed['status']}"
                + (
                    f"; its bench (same settings): {fmt(b.get('ms_per_image_iter'))} ms/image-"
                    f"iteration, {fmt(b.get('images_per_hour'))} images/h"
                    if b
                    else ""
                )
            )
    py = next((x for x in steps if x["step"] == "pytest"), None)
    if py and "outcomes" in py:
        text.append(
            "pytest -m gpu: "
            + (
                ", ".join(f"{v} {k}" for k, v in sorted(py.get("outcomes", {}).items()))
                or "no outcomes (see log.txt)"
            )
        )
        for t in py.get("tests", []):
            if t["outcome"] != "passed":
                text.append(f"  {t['outcome']}: {t['name']}: {t.get('message', '')[:200]}")
    for x in lines:
        if x.get("step") == "pytest" and "test" in x:
            figures = {
                k: v for k, v in x.items() if k not in ("step", "test", "device", "device_name")
            }
            text.append(f"  {x['test']}: {json.dumps(figures, default=str)}"[:700])
            if x["test"] == "precision_final_loss_vs_fp32" and gpu:
                for p, r in x.get("loss_ratio_vs_fp32", {}).items():
                    if p != "fp32":
                        name = (
                            f"{p} final loss <= {1 + LOSS_TOLERANCE:g} x strict fp32 "
                            "(512px, 200 it)"
                        )
                        checks.append((name, r, r <= 1 + LOSS_TOLERANCE))
    if gpu:  # a target whose step did not finish is not met silently
        for x in steps:
            if x["step"] in TARGET_STEPS and x["status"] != "ok" and x.get("ratio") is None:
                checks.append((f"{x['step']}: no figure ({x['status']})", None, None))
    if checks:
        text.append("targets (shared/PERF.md):")
        for name, value, ok in checks:
            text.append(f"  {verdict(ok):8s} {name}: {fmt(value, 4)}")
    bad = [x["step"] for x in steps if not x["status"].startswith(("ok", "skipped"))]
    text.append(
        f"result: {'all steps ok or skipped' if not bad else 'problems in ' + ', '.join(bad)}; "
        f"figures: {os.path.join(out_dir, 'results.jsonl')}"
    )
    summary = "\n".join(text) + "\n"
    with open(os.path.join(out_dir, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(summary)
    append(
        {
            "step": "summary",
            "elapsed_s": int(elapsed),
            "failed_steps": bad,
            "targets": [{"name": n, "value": v, "met": ok} for n, v, ok in checks],
        }
    )
    print(summary, end="")
    return 1 if bad else 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    sys.exit(
        {
            "step": cmd_step,
            "skip": cmd_skip,
            "pytest": cmd_pytest,
            "env": cmd_env,
            "mixed": cmd_mixed,
            "summary": cmd_summary,
        }[cmd](*args)
        or 0
    )
