"""``python -m pipeline.bench`` (``stylize bench-pipeline``): the driver at dataset scale.

Runs the real driver (:func:`pipeline.driver.run_job`: listing, work items, shards, the
scheduling policy, Ray actors through :mod:`pipeline.raypool`, manifest parts, the final
manifest, run.json) over N synthetic items with a *stand-in worker*: a class that speaks the
real worker protocol (``info``; ``prepare`` -> ``(rows, batches)``; ``run_batch`` -> rows made
with :func:`pipeline.manifest.make_row`) but does no image work, reads no input and writes no
output image. Then it runs the same job again: a resume of the finished run, which computes
nothing. Then both again at a smaller N with the input, the parts and the manifest on S3
(moto's ``ThreadedMotoServer`` on 127.0.0.1, in a process of its own so that its memory and
CPU are not counted as the driver's).

Synthetic inputs: empty ``.jpg`` files in a folder on local disk, 1,000 per subfolder
(ImageNet's layout), listed by the real listing (an ``os.scandir`` walk, one ``stat`` per
file); every content goes under ``--styles`` styles (tiny PNGs, decoded once by the driver as
in a real job), so ``items = contents x styles``. On S3 the same names are empty objects under
one prefix (listed with paginated LIST calls). With ``--workdir`` the local inputs are kept
and reused by the next run with the same counts.

The stand-in imports no torch itself (its module imports ``pipeline.items`` and
``pipeline.manifest`` only); the job's :class:`~pipeline.worker.WorkerSpec`, whose engine
settings come from the ``stylize`` package, reaches the actors through a Ray serializer,
registered on this benchmark's own Ray instance, that ships only the params hash and the
batch size. Each actor says whether torch is in its ``sys.modules`` all the same
(``torch_in_actors``): the modules a WorkItem's unpickling imports must not pull it in.

Figures (one JSON object on stdout; progress lines on stderr), for each run:

- ``items_per_s``: sustained throughput: items finished per second from the moment every
  stand-in was ready (or the 10th percentile of the rows' ``finished_at``, if later) to the
  90th percentile, i.e. without the actors' start-up and the tail; ``run_items_per_s``: items
  over the whole scheduling phase, actor start-up included;
- ``driver_peak_rss_mb``: the driver process's peak resident memory during the run (Linux:
  the peak is reset before each run; the S3 run has a process of its own);
  ``driver_rss_before_mb``: that process before the run (its imports: Ray, pyarrow, and
  torch where ``torch_in_driver``); the actors and Ray's own processes are not included
  (``actor_rss_mb``: one stand-in actor, median);
- ``driver_cpu_s``: CPU seconds of the driver process for the whole run, all its threads;
- ``list_s``: listing, work items and the resume check; ``manifest_write_s``: from the last
  shard to the end of the run (the rows in job order, ``manifest.parquet``, run.json, the
  summary), of which ``manifest_file_s`` is ``manifest.write_manifest`` itself; the HTML
  report written after it is ``report_s`` (its result thumbnails find no image here);
- ``resume_s``: the whole rerun of the finished job, listing included; it computes nothing
  (``resume_computed``) and leaves ``manifest.parquet`` untouched; ``resume_peak_rss_mb``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pipeline.items import Shard, StyleRef
from pipeline.rows import Row, make_row, now
from pipeline.runfolder import RunFolder

DEFAULT_BATCH = 16

# ------------------------------------------------------------------------- the stand-in


class BenchSpec:
    """What a stand-in actor gets instead of a WorkerSpec (no engine settings, no torch)."""

    def __init__(self, params_hash: str, batch_size: int, work_s: float = 0.0):
        self.params_hash, self.batch_size, self.work_s = params_hash, batch_size, work_s


_WORK_S = 0.0  # simulated device seconds per run_batch call (--work-ms), set by the driver


def _spec_state(spec: Any) -> tuple:
    """Serializer of WorkerSpec on the benchmark's Ray instance (runs in the driver)."""
    return (spec.params_hash, int(spec.stylize.batch_size or DEFAULT_BATCH), _WORK_S)


def _spec_from_state(state: tuple) -> BenchSpec:
    """Its deserializer (runs in the actor)."""
    return BenchSpec(*state)


def _status_mb(key: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process from /proc, in MB; ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StandInWorker:
    """The worker protocol of :class:`pipeline.worker.StyleWorker` without the work: every
    item becomes an ``ok`` row of a 64x48 output that is never written."""

    def __init__(self, spec: Any):
        self.params_hash = spec.params_hash
        self.max_batch = max(1, int(getattr(spec, "batch_size", DEFAULT_BATCH) or DEFAULT_BATCH))
        self.work_s = float(getattr(spec, "work_s", 0.0))
        self.label = f"{socket.gethostname()}/pid{os.getpid()}/stand-in"
        self._items: dict[str, Any] = {}
        self._shard, self._attempts = -1, {}  # type: int, Mapping[str, int]

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "worker": self.label,
            "device": "stand-in",
            "weights_hash": "stand-in",
            "torch_loaded": "torch" in sys.modules,
            "rss_mb": round(_status_mb("VmRSS"), 1),
            "ready_at": time.time(),
        }

    def prepare(
        self,
        shard: Shard,
        styles: Mapping[str, StyleRef],
        attempts: Mapping[str, int],
        isolate: frozenset[str] = frozenset(),
    ) -> tuple[list[Row], list[list[str]]]:
        """No decoding: batches of ``max_batch`` item ids in shard order, suspects alone."""
        self._shard, self._attempts = shard.shard_id, attempts
        self._items = {i.item_id: i for i in shard.items}
        batches: list[list[str]] = []
        group: list[str] = []
        for item in shard.items:
            if item.item_id in isolate:
                batches.append([item.item_id])
                continue
            group.append(item.item_id)
            if len(group) == self.max_batch:
                batches.append(group)
                group = []
        if group:
            batches.append(group)
        return [], batches

    def run_batch(self, item_ids: Sequence[str]) -> list[Row]:
        started = now()
        if self.work_s:
            time.sleep(self.work_s)
        return [
            make_row(
                self._items.pop(i),
                "ok",
                params_hash=self.params_hash,
                shard=self._shard,
                attempt=self._attempts.get(i, 1),
                started_at=started,
                worker=self.label,
                width=64,
                height=48,
                iterations=1,
                content_loss=0.0,
                style_loss=0.0,
                tv_loss=0.0,
                total_loss=0.0,
                duration_s=self.work_s / len(item_ids),
            )
            for i in item_ids
        ]


# ----------------------------------------------------------------------------- inputs


def _names(contents: int, per_dir: int = 1000) -> Iterator[str]:
    for n in range(contents):
        yield f"n{n // per_dir:05d}/img_{n:08d}.jpg"


def _style_png(k: int) -> bytes:
    """A valid 4x4 RGB PNG (the driver decodes every style once before the run)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    w = h = 4
    raw = b"".join(
        b"\0"
        + b"".join(bytes(((40 * k + 40 * x) % 256, 90, (200 - 30 * y) % 256)) for x in range(w))
        for y in range(h)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def make_local_inputs(root: str, contents: int, styles: int) -> tuple[str, dict[str, str]]:
    """``root/input/nXXXXX/img_XXXXXXXX.jpg`` (empty) and ``root/styles/style_K.png``; a
    folder made before for the same counts (``--workdir``) is reused as it is."""
    import shutil

    inp, style_dir = os.path.join(root, "input"), os.path.join(root, "styles")
    marker = os.path.join(root, f".made-{contents}-{styles}")
    if not os.path.exists(marker):
        shutil.rmtree(inp, ignore_errors=True)
        made: set[str] = set()
        for rel in _names(contents):
            folder = os.path.join(inp, rel.split("/", 1)[0])
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            with open(os.path.join(inp, rel), "wb"):
                pass
        os.makedirs(style_dir, exist_ok=True)
        for k in range(styles):
            with open(os.path.join(style_dir, f"style_{k}.png"), "wb") as f:
                f.write(_style_png(k))
        with open(marker, "wb"):
            pass
    return inp, {f"style_{k}": os.path.join(style_dir, f"style_{k}.png") for k in range(styles)}


def make_s3_inputs(fs: Any, bucket: str, contents: int, styles: int) -> tuple[str, dict[str, str]]:
    """The same names as empty objects under ``s3://bucket/input/`` (``contents`` 0: there
    already), the styles beside them."""
    if contents:
        fs.mkdir(bucket)
    keys = [f"{bucket}/input/{rel}" for rel in _names(contents)]
    for i in range(0, len(keys), 1000):  # s3fs sends each batch's PUTs concurrently
        fs.pipe(dict.fromkeys(keys[i : i + 1000], b""))
    out = {}
    for k in range(styles):
        fs.pipe_file(f"{bucket}/styles/style_{k}.png", _style_png(k))
        out[f"style_{k}"] = f"s3://{bucket}/styles/style_{k}.png"
    return f"s3://{bucket}/input", out


# ------------------------------------------------------------------------- measuring


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); False where that is refused
    (then the peak is the process's since it started)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextmanager
def _timed(box: dict[str, float]) -> Iterator[None]:
    """Time ``manifest.write_manifest`` and ``report.write_report`` as the driver calls them
    (instrumentation only: the functions themselves run unchanged)."""
    import importlib

    patched = []
    for module_name, name, key in (
        ("pipeline.manifest", "write_manifest", "manifest_file_s"),
        ("pipeline.report", "write_report", "report_s"),
    ):
        try:
            module = importlib.import_module(module_name)
            original = getattr(module, name)
        except (ImportError, AttributeError):
            continue

        def timed(*args: Any, _original=original, _key=key, **kwargs: Any):
            t0 = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                box[_key] = box.get(_key, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed)
        patched.append((module, name, original))
    try:
        yield
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


def _sustained(finished: Sequence[Any], all_ready: float | None = None) -> float | None:
    """Items per second from the time every stand-in was ready (or the 10th percentile of
    the finish times, whichever is later) to the 90th percentile: the steady state, without
    the actors' start-up and the tail."""
    if len(finished) < 20:
        return None
    import bisect

    ts = sorted(t.timestamp() for t in finished)
    b = int(0.9 * len(ts))
    a = max(int(0.1 * len(ts)), bisect.bisect_left(ts, all_ready or 0.0))
    if b - a < 0.1 * len(ts):  # the actors came up too late for a steady state
        a = int(0.1 * len(ts))
    return round((b - a) / max(ts[b] - ts[a], 1e-6), 1)


def _job(
    inp: str,
    styles: Mapping[str, str],
    output: str,
    args: argparse.Namespace,
    options: Mapping[str, Any] | None = None,
):
    from pipeline.jobconfig import job_from_mapping

    return job_from_mapping(
        {
            "input": inp,
            "styles": dict(styles),
            "output": output,
            "extensions": ["jpg"],
            "shard_size": args.shard_size,
            "stylize": {"device": "cpu", "batch_size": args.batch},
            "ray": {
                "num_workers": args.workers,
                "cpus_per_worker": 1,
                "gpus_per_worker": 0,
                "startup_timeout_s": 900,
            },
            "storage_options": dict(options or {}),
        }
    )


def run_phase(
    inp: str,
    styles: Mapping[str, str],
    output: str,
    args: argparse.Namespace,
    options: Mapping[str, Any] | None = None,
    log=print,
) -> dict[str, Any]:
    """The job run once (every item computed by stand-ins), then again (a resume)."""
    import io

    from pipeline import manifest, raypool, storage
    from pipeline.driver import run_job
    from pipeline.worker import WorkerSpec

    global _WORK_S
    _WORK_S = args.work_ms / 1000.0
    job = _job(inp, styles, output, args, options)
    options = job.storage_options
    storage.remove(output, options, recursive=True)  # a run left in --workdir
    out: dict[str, Any] = {}
    box: dict[str, float] = {}
    # This benchmark's own Ray instance: one logical CPU per stand-in (they use far less).
    with raypool.local_instance(
        args.workers, [(WorkerSpec, _spec_state, _spec_from_state)], object_store_memory=512 * 2**20
    ):
        peak_reset = _reset_peak_rss()
        out["driver_rss_before_mb"] = round(_status_mb("VmRSS"), 1)
        t0, cpu0 = time.monotonic(), _cpu_s()
        with _timed(box):
            result = run_job(job, stream=io.StringIO(), worker_class=StandInWorker)
        wall, cpu = time.monotonic() - t0, _cpu_s() - cpu0
        out["driver_peak_rss_mb"] = round(_status_mb("VmHWM"), 1)
        out["peak_rss_reset"] = peak_reset
    run = manifest.read_json(RunFolder(result.output).run_json, options)
    table = manifest.read_manifest(result.output, options)
    if run is None or table is None:
        raise RuntimeError(f"the run left no run info or manifest in {result.output}")
    timings, infos = run["timings"], run["workers"]
    n = table.num_rows
    out.update(
        items=n,
        computed=result.computed,
        exit_code=result.exit_code,
        ok=result.counts.get("ok", 0),
        unique_item_ids=len(set(table["item_id"].to_pylist())),
        workers=len({w["pid"] for w in infos}),
        torch_in_actors=any(w.get("torch_loaded") for w in infos),
        torch_in_driver="torch" in sys.modules,
        actor_rss_mb=round(statistics.median(w.get("rss_mb", 0) for w in infos), 1)
        if infos
        else None,
        items_per_s=_sustained(
            table["finished_at"].to_pylist(),
            max((w.get("ready_at", 0.0) for w in infos), default=None),
        ),
        run_items_per_s=round(result.computed / max(timings["run_s"], 1e-9), 1),
        driver_cpu_s=round(cpu, 1),
        list_s=timings["list_s"],
        run_s=timings["run_s"],
        manifest_write_s=round(
            wall - timings["list_s"] - timings["run_s"] - box.get("report_s", 0.0), 2
        ),
        manifest_file_s=round(box.get("manifest_file_s", float("nan")), 2),
        report_s=round(box.get("report_s", 0.0), 2),
        parts=len(manifest.part_ids(result.output, options)),
        wall_s=round(wall, 2),
    )
    del table
    if out["torch_in_actors"]:
        log(
            "bench: WARNING: torch was imported in the stand-in actors (by the modules that "
            "unpickling a WorkItem imports): their memory and start-up include it"
        )
    log(
        f"bench: {n} items, {out['workers']} stand-ins: {out['items_per_s']} items/s "
        f"sustained, driver peak {out['driver_peak_rss_mb']} MB, final manifest "
        f"{out['manifest_write_s']} s"
    )
    # the rerun: nothing left to compute (no Ray is started for it)
    mtime = _mtime(result.output, options)
    _reset_peak_rss()
    box.clear()
    t0 = time.monotonic()
    with _timed(box):
        again = run_job(job, stream=io.StringIO(), worker_class=StandInWorker)
    out["resume_s"] = round(time.monotonic() - t0, 2)
    out["resume_peak_rss_mb"] = round(_status_mb("VmHWM"), 1)
    out["resume_computed"] = again.computed
    out["resume_manifest_untouched"] = _mtime(result.output, options) == mtime
    log(f"bench: resume of the finished run {out['resume_s']} s, computed {again.computed}")
    return out


def _mtime(output: str, options: Mapping[str, Any]) -> Any:
    from pipeline import storage

    fs, path = storage.get_fs(RunFolder(output).manifest_file, options)
    fs.invalidate_cache()
    info = fs.info(path)
    return info.get("mtime") or info.get("LastModified") or info.get("ETag")


# --------------------------------------------------------------------------------- S3

_MOTO = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
bucket, contents = sys.argv[1], int(sys.argv[2])
made = 0
try:  # the empty input objects straight into moto's store: PUTs would take minutes
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket(bucket, "eu-west-1")
    for n in range(contents):
        backend.put_object(bucket, "input/n%05d/img_%08d.jpg" % (n // 1000, n), b"")
    made = contents
except Exception:
    pass
print("%s:%d %d" % (*server.get_host_and_port(), made), flush=True)
sys.stdin.read()  # until the benchmark closes our stdin (or dies)
server.stop()
"""


@contextmanager
def _moto_server(bucket: str, contents: int) -> Iterator[tuple[str, bool]]:
    """moto's ThreadedMotoServer on 127.0.0.1 in a child process, with ``bucket`` holding
    the ``contents`` empty input objects if moto's store could be filled directly: (endpoint
    URL, whether it was)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO, bucket, str(contents)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None  # PIPE, both
    try:
        line = proc.stdout.readline().split()
        if not line:
            raise RuntimeError("moto's server did not start (is moto[server] installed?)")
        yield f"http://{line[0]}", int(line[1]) == contents
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _s3_in_child(args: argparse.Namespace) -> dict[str, Any]:
    """The S3 run in a fresh process: its driver's memory is its own, not what the
    million-item run left in this one."""
    cmd = [
        sys.executable,
        "-m",
        "pipeline.bench",
        "--phase",
        "s3",
        "--json",
        "--s3-items",
        str(args.s3_items),
        "--workers",
        str(args.workers),
        "--shard-size",
        str(args.shard_size),
        "--batch",
        str(args.batch),
        "--styles",
        str(args.styles),
        "--work-ms",
        str(args.work_ms),
    ]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # its stderr is ours
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the S3 run failed (exit code {done.returncode})")
    return json.loads(lines[-1])


def _s3_phase(args: argparse.Namespace, log) -> dict[str, Any]:
    import s3fs

    contents = -(-args.s3_items // args.styles)
    t0 = time.monotonic()
    with _moto_server("bench", contents) as (endpoint, filled):
        options = {
            "endpoint_url": endpoint,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "eu-west-1"},
        }
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        inp, styles = make_s3_inputs(fs, "bench", 0 if filled else contents, args.styles)
        setup = round(time.monotonic() - t0, 2)
        log(
            f"bench: {contents} empty objects x {args.styles} styles on moto at {endpoint} "
            f"({setup} s)"
        )
        out = run_phase(inp, styles, "s3://bench/output", args, options, log=log)
        out["setup_s"] = setup
        return out


# ------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    from pipeline.shell import Parser  # a bad command line: one line, exit 2

    p = Parser(
        prog="stylize bench-pipeline",
        description="The driver at dataset scale: the real driver, scheduler, Ray actors and "
        "manifest code over N synthetic items with stand-in workers (no torch, no "
        "image work), then a resume of the finished run; the same on S3 (moto) at "
        "a smaller N. Prints JSON.",
    )
    p.add_argument(
        "--items",
        type=int,
        default=1_000_000,
        help="items on local disk, contents x styles (default 1,000,000)",
    )
    p.add_argument("--workers", type=int, default=32, help="stand-in actors (default 32)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=256,
        help="items per shard, i.e. per manifest part (default 256)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"items per run_batch call (stylize.batch_size; default {DEFAULT_BATCH})",
    )
    p.add_argument(
        "--styles", type=int, default=2, help="styles per content (default 2, as Stylized-ImageNet)"
    )
    p.add_argument(
        "--s3-items",
        type=int,
        default=20_000,
        help="items of the run on S3 (moto); 0 skips it (default 20,000)",
    )
    p.add_argument(
        "--work-ms",
        type=float,
        default=0.0,
        help="simulated device time per run_batch call, ms (default 0: the "
        "scheduling throughput alone)",
    )
    p.add_argument(
        "--workdir",
        help="folder for the local inputs and outputs, kept (default: "
        "a temporary folder, removed at the end)",
    )
    p.add_argument("--json", action="store_true", help="the JSON on one line (default: indented)")
    p.add_argument(
        "--phase", choices=("all", "s3"), default="all", help=argparse.SUPPRESS
    )  # s3: that run alone (in a process of its own)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (
        min(args.items, args.workers, args.shard_size, args.styles, args.batch) < 1
        or args.s3_items < 0
        or args.work_ms < 0
    ):
        from pipeline.errors import UsageError

        raise UsageError(
            "--items, --workers, --shard-size, --styles and --batch must be >= 1, --s3-items "
            "and --work-ms >= 0"
        )

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)  # always a private instance
    if args.phase == "s3":
        print(json.dumps(_s3_phase(args, log)), flush=True)
        return 0
    result: dict[str, Any] = {"items": args.items, "workers": args.workers}
    result.update(
        workers_requested=args.workers,
        shard_size=args.shard_size,
        batch=args.batch,
        styles=args.styles,
        work_ms=args.work_ms,
        cpus=os.cpu_count(),
    )
    with _workdir(args.workdir) as root:
        contents = -(-args.items // args.styles)
        t0 = time.monotonic()
        inp, styles = make_local_inputs(os.path.join(root, "local"), contents, args.styles)
        result["setup_s"] = round(time.monotonic() - t0, 2)
        log(
            f"bench: {contents} empty files x {args.styles} styles under {inp} "
            f"({result['setup_s']} s)"
        )
        result.update(run_phase(inp, styles, os.path.join(root, "local", "output"), args, log=log))
        if args.s3_items > 0:
            result["s3"] = _s3_in_child(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2), flush=True)
    return 0


@contextmanager
def _workdir(path: str | None) -> Iterator[str]:
    if path:
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="stylize-bench-") as tmp:
        yield tmp


if __name__ == "__main__":
    from pipeline.shell import run_alone

    sys.exit(run_alone("bench-pipeline", main))
