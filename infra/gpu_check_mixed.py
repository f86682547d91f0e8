"""gpu-check's mixed_run step: ``stylize run`` inline (Ray hidden) over a collection of mixed
sizes and aspect ratios, against ``stylize bench`` at the same settings in the same process.

    python infra/gpu_check_mixed.py CPU WORK    # CPU: 1 for the tiny CPU dry run, else 0

Prints its figures as JSON lines (gpu_check_results.cmd_step records the last one)."""

import collections
import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
from typing import NamedTuple

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


@dataclasses.dataclass(frozen=True)
class Settings:
    """The step's sizes: the real check on a GPU, a tiny dry run on the CPU. Per bucket and
    shard, ``per_bucket`` images: 16 on a GPU, the worker's batch (batch_size 0) and the
    bench's."""

    cuda: bool
    size: int
    iterations: int
    per_bucket: int
    shards: int
    sides: tuple[int, int]  # the collection's longest sides, from and to
    bench_n: int
    repeats: int

    @classmethod
    def of(cls, cuda):
        """The GPU's settings if ``cuda``, else the CPU dry run's."""
        if cuda:
            return cls(
                cuda=True,
                size=512,
                iterations=100,
                per_bucket=16,
                shards=5,
                sides=(300, 1200),
                bench_n=16,
                repeats=2,
            )
        return cls(
            cuda=False,
            size=32,
            iterations=2,
            per_bucket=2,
            shards=2,
            sides=(40, 96),
            bench_n=2,
            repeats=1,
        )

    @property
    def device(self):
        return "cuda" if self.cuda else "cpu"

    @property
    def precision(self):
        return "bf16" if self.cuda else "fp32"

    @property
    def shard_size(self):
        return self.per_bucket * len(SHARD_MIX) // 2  # SHARD_MIX: two slots per bucket

    @property
    def n(self):
        return self.shard_size * self.shards

    def bench_argv(self):
        """``stylize bench``'s command line at the run's settings (square crops of the same
        photos)."""
        return [
            "--preset",
            "gatys2016",
            "--size",
            str(self.size),
            "--iterations",
            str(self.iterations),
            "--images",
            str(self.bench_n),
            "--batch",
            "0",
            "--baseline-images",
            "0",
            "--init",
            "noise",
            "--device",
            self.device,
            "--precision",
            self.precision,
            "--repeats",
            str(self.repeats),
        ] + (["--compile"] if self.cuda else ["--warmup", "1"])


BENCH_FIGURES = (
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


def run_bench(s):
    """1. ``stylize bench`` at the run's settings, measured first in this process. Returns
    (the step's result so far, printed at once should the run not finish; the bench's
    figures)."""
    from pipeline import bench_cmd
    from stylize.bench import bench

    argv = s.bench_argv()
    t0 = time.perf_counter()
    b = bench(bench_cmd.parse_options(argv)[0])
    bench_s = time.perf_counter() - t0
    result = {
        "images": s.n,
        "size": s.size,
        "preset": "gatys2016",
        "iterations": s.iterations,
        "precision": s.precision,
        "compile": s.cuda,
        "device": s.device,
        "bucket": True,
        "shard_size": s.shard_size,
        "per_bucket_and_shard": s.per_bucket,
        "ray_hidden": True,
        "bench": {k: b.get(k) for k in BENCH_FIGURES}
        | {"step_s": round(bench_s, 1), "command": "stylize bench " + " ".join(argv)},
    }
    print(json.dumps(result), flush=True)
    return result, b


def write_job(s, work, result):
    """2. The collection (:func:`_make_collection`, its figures into ``result``) and the job
    file: inline, overwrite, no grid. Returns (the job file, the output folder)."""
    import shutil

    import yaml

    from stylize.images import bucket_shape

    root = os.path.join(work, "mixed")
    shutil.rmtree(root, ignore_errors=True)
    inp, out = os.path.join(root, "in"), os.path.join(root, "out")
    os.makedirs(inp)
    t0 = time.perf_counter()
    files = _make_collection(inp, s.n, s.shard_size, s.sides)
    buckets = collections.Counter("{}x{}".format(*bucket_shape(w, h, s.size)) for _, w, h in files)
    result.update(
        make_inputs_s=round(time.perf_counter() - t0, 1),
        ratios=[f"{a}:{b}" for a, b in RATIOS],
        longest_side_px=[min(max(w, h) for _, w, h in files), max(max(w, h) for _, w, h in files)],
        input_mb=round(sum(os.path.getsize(os.path.join(inp, f)) for f, _, _ in files) / 2**20, 1),
        buckets=dict(buckets),
    )
    stylize_opts = {
        "preset": "gatys2016",
        "size": s.size,
        "iterations": s.iterations,
        "device": s.device,
        "precision": s.precision,
        "compile": s.cuda,
    }
    job = {
        "input": inp,
        "output": out,
        "styles": {"starry_night": "pkg://stylize/samples/starry_night.jpg"},
        "stylize": stylize_opts,
        "shard_size": s.shard_size,
        "mode": "overwrite",
        "ray": {"address": "inline"},
        "grid": False,
    }
    job_path = os.path.join(root, "job.yaml")
    with open(job_path, "w") as f:
        yaml.safe_dump(job, f)
    return job_path, out


class EngineCall(NamedTuple):
    """One ``Stylizer.stylize_batch`` call of the run."""

    start: float
    end: float
    images: int
    shape: tuple[int, ...]  # (height, width)
    graphs: int | None  # graphs compiled during the call (None: no dynamo counter)


class CallTimer:
    """3a. Every engine call (its images, shape, graphs compiled) and every worker call
    (``prepare``: read + decode; ``run_batch``: stylize + write) timed, while
    :meth:`patched` has them wrapped."""

    def __init__(self):
        self.calls: list[EngineCall] = []
        self.phases: list[tuple[str, float, float]] = []  # (worker method, start, end)

    @property
    def busy_s(self):
        """The engine calls' time together."""
        return sum(c.end - c.start for c in self.calls)

    @property
    def compiling(self):
        """The engine calls that compiled a graph."""
        return [c for c in self.calls if c.graphs]

    def steady_window(self):
        """(first, last): from the first shard's read to the last batch's write (the last
        engine call's end without worker calls to go by)."""
        first = min(start for _, start, _ in self.phases)
        last = (
            max(end for name, _, end in self.phases if name == "run_batch")
            if any(p[0] == "run_batch" for p in self.phases)
            else self.calls[-1].end
        )
        return first, last

    @contextlib.contextmanager
    def patched(self):
        """The engine's and the worker's methods wrapped, put back on the way out."""
        import pipeline.worker as worker_mod
        import stylize.engine as engine_mod

        targets = {
            "stylize_batch": engine_mod.Stylizer,
            "prepare": worker_mod.StyleWorker,
            "run_batch": worker_mod.StyleWorker,
        }
        originals = {name: getattr(cls, name) for name, cls in targets.items()}
        engine_mod.Stylizer.stylize_batch = self._engine_call(originals["stylize_batch"])
        for name in ("prepare", "run_batch"):
            setattr(worker_mod.StyleWorker, name, self._worker_call(name, originals[name]))
        try:
            yield
        finally:
            for name, cls in targets.items():
                setattr(cls, name, originals[name])

    def _engine_call(self, original):
        from stylize.bench import dynamo_graphs

        calls = self.calls

        def stylize_batch(engine, contents, *args, **kwargs):
            g0, s = dynamo_graphs(), time.perf_counter()
            try:
                return original(engine, contents, *args, **kwargs)
            finally:
                g1 = dynamo_graphs()
                shape = tuple(int(v) for v in contents[0].shape[-2:]) if len(contents) else (0, 0)
                calls.append(
                    EngineCall(
                        s,
                        time.perf_counter(),
                        len(contents),
                        shape,
                        None if g0 is None else g1 - g0,
                    )
                )
                print(
                    f"mixed_run: engine call {shape[1]}x{shape[0]} x {len(contents)}: "
                    f"{calls[-1].end - s:.2f} s, {calls[-1].graphs} graphs compiled",
                    file=sys.stderr,
                    flush=True,
                )

        return stylize_batch

    def _worker_call(self, name, original):
        phases = self.phases

        def call(worker, *args, **kwargs):
            s = time.perf_counter()
            try:
                return original(worker, *args, **kwargs)
            finally:
                phases.append((name, s, time.perf_counter()))

        return call


class UtilisationSampler:
    """3b. NVML's "a kernel ran" share of the GPU, sampled every 50 ms on a daemon thread
    while the run lasts (a second opinion on the idle share; none without NVML)."""

    def __init__(self):
        self.samples: list[tuple[float, int]] = []  # (time, utilisation %)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _sample(self):
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter(), torch.cuda.utilization(0)))
            except Exception:  # noqa: BLE001 - no NVML: no second opinion
                return
            self._stop.wait(0.05)

    def steady_figures(self, first, last, compiling):
        """NVML's share of the samples from ``first`` to ``last`` in which no kernel ran, and
        the mean utilisation, the engine calls in ``compiling`` left out ({} if none)."""
        window = [
            u
            for t, u in self.samples
            if first <= t <= last and not any(c.start <= t <= c.end for c in compiling)
        ]
        if not window:
            return {}
        return {
            "nvml_idle_share_steady": round(sum(u == 0 for u in window) / len(window), 4),
            "nvml_mean_utilisation_steady": round(sum(window) / len(window), 1),
        }


def timed_run(job_path, timer, sampler, cuda):
    """3. ``stylize run`` on the job, with ``timer``'s wrappers in and (on a GPU) ``sampler``
    running. Returns (exit code, start, end)."""
    import pipeline.cli

    with timer.patched():
        if cuda:
            sampler.start()
        t0 = time.perf_counter()
        try:
            rc = pipeline.cli.main(["run", job_path])
        finally:
            t1 = time.perf_counter()
            sampler.stop()
    return rc, t0, t1


def read_run_files(out, result):
    """What the run wrote, into ``result``: its timings and counts (run.json), the mean
    iterations (manifest.parquet); an error instead of each that cannot be read."""
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


def whole_run_figures(timer, t0, wall, done):
    """4a. The whole run: the command's wall time (loading VGG-19, listing, compiling each
    bucket, the report) against the engine calls' busy time."""
    calls, busy, compiling = timer.calls, timer.busy_s, timer.compiling
    graphs = sum(c.graphs or 0 for c in calls) if calls and calls[0].graphs is not None else None
    return {
        "images_per_hour": round(3600 * done / wall, 1) if wall else None,
        "engine_calls": len(calls),
        "batches": dict(sorted(collections.Counter(c.images for c in calls).items())),
        "graphs_compiled": graphs,
        "compiling_calls": len(compiling),
        "compiling_calls_s": round(sum(c.end - c.start for c in compiling), 2),
        "first_engine_call_after_s": round(calls[0].start - t0, 3) if calls else None,
        "gpu_busy_s": round(busy, 3),
        "gpu_idle_share": round(max(0.0, 1 - busy / wall), 4),
    }


def steady_figures(s, timer, window, done, bench_iph, whole_iph):
    """4b. Once every bucket is compiled: the ``window`` (:meth:`CallTimer.steady_window`)
    less the engine calls that compiled a graph, and their images; against the bench's
    images/hour (``bench_iph``) per image and per pixel, and the whole run's
    (``whole_iph``)."""
    first, last = window
    busy, compiling = timer.busy_s, timer.compiling
    compile_s = sum(c.end - c.start for c in compiling)
    steady_s = (last - first) - compile_s
    steady_images = done - sum(c.images for c in compiling)
    steady_calls = [c for c in timer.calls if not c.graphs]
    px = sum(c.images * c.shape[0] * c.shape[1] for c in steady_calls)
    mean_px = px / max(sum(c.images for c in steady_calls), 1)
    steady_iph = 3600 * steady_images / steady_s if steady_s > 0 and steady_images > 0 else None
    return {
        "steady_window_s": round(last - first, 3),
        "steady_s": round(steady_s, 3),
        "steady_images": steady_images,
        "steady_images_per_hour": None if steady_iph is None else round(steady_iph, 1),
        "steady_gpu_idle_share": round(max(0.0, 1 - (busy - compile_s) / steady_s), 4)
        if steady_s > 0
        else None,
        "steady_ms_per_image_iter_engine": round(
            1000 * (busy - compile_s) / max(steady_images * s.iterations, 1), 4
        ),
        "pixels_vs_bench": round(mean_px / (s.size * s.size), 4),
        "ratio": round(steady_iph / bench_iph, 4) if steady_iph and bench_iph else None,
        "ratio_whole_run": round(whole_iph / bench_iph, 4) if bench_iph and whole_iph else None,
        "ratio_per_pixel": round(steady_iph * mean_px / (bench_iph * s.size * s.size), 4)
        if steady_iph and bench_iph
        else None,
    }


def _import_pipeline_without_ray():
    """None if the pipeline imports with Ray hidden, else the skipped step's record."""
    _hide_ray()
    try:
        import pipeline.cli  # noqa: F401
        import pipeline.driver  # noqa: F401
        import pipeline.worker  # noqa: F401
    except Exception as e:  # noqa: BLE001
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        return {
            "status": f"skipped: the pipeline does not import without Ray ({msg})",
            "ray_hidden": True,
        }
    return None


def cmd_mixed(cpu, work):
    """`stylize run` with ray.address: inline (Ray hidden, as on a machine without it) over a
    collection of mixed sizes and aspect ratios, and `stylize bench` at the same settings
    (preset, size, iterations, precision, compile, init) measured first in this process:
    images/hour of both, and the GPU's idle share, for the whole run and once every aspect
    bucket is compiled."""
    import gc

    skipped = _import_pipeline_without_ray()
    if skipped is not None:
        print(json.dumps(skipped))
        return 0
    import torch

    s = Settings.of(cpu != "1" and torch.cuda.is_available())
    result, b = run_bench(s)
    gc.collect()
    if s.cuda:
        torch.cuda.empty_cache()
    job_path, out = write_job(s, work, result)
    timer, sampler = CallTimer(), UtilisationSampler()
    rc, t0, t1 = timed_run(job_path, timer, sampler, s.cuda)
    wall = t1 - t0
    result.update(exit_code=rc, wall_s=round(wall, 3))
    read_run_files(out, result)
    done = (result.get("counts") or {}).get("ok", 0)
    result.update(whole_run_figures(timer, t0, wall, done))
    if timer.calls and timer.phases:
        first, last = timer.steady_window()
        bench_iph, whole_iph = b.get("images_per_hour"), result["images_per_hour"]
        result.update(steady_figures(s, timer, (first, last), done, bench_iph, whole_iph))
        result.update(sampler.steady_figures(first, last, timer.compiling))
    print(json.dumps(result))
    return 0 if rc == 0 and done == s.n else 1


if __name__ == "__main__":
    sys.exit(cmd_mixed(*sys.argv[1:]) or 0)
