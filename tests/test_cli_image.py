"""`stylize image`: a decodable output of the requested size, written atomically, paths or
fsspec URLs; exit 2 with one line for every kind of bad input."""

from __future__ import annotations

import io
from pathlib import Path

import fsspec
import pytest
import torch

from pipeline import image_cmd
from pipeline.cli import main
from stylize.config import STYLE_LOSSES
from stylize.images import decode_image
from stylize.model import load_caffe_state

SAMPLES = Path(__file__).resolve().parents[1] / "stylize" / "samples"
CONTENT, STYLE = str(SAMPLES / "tubingen.jpg"), str(SAMPLES / "starry_night.jpg")
FAST = ["--size", "40", "--iterations", "3", "--quiet", "--device", "cpu"]


def run(capsys, *args):
    rc = main(["image", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out.webp", "out.tif"])
def test_writes_a_decodable_image_of_the_requested_size(tmp_path, capsys, name):
    out = tmp_path / name
    rc, stdout, err = run(capsys, "--content", CONTENT, "--style", STYLE, "-o", str(out), *FAST)
    assert rc == 0, err
    img = decode_image(out.read_bytes())
    assert max(img.size) == 40
    assert img.size == (40, 30)  # tubingen is 4:3, kept exactly
    assert "wrote" in stdout
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left beside it


@pytest.mark.slow
def test_blend_snapshots_options_and_16_bit(tmp_path, capsys):
    out = tmp_path / "blend.png"
    rc, _, err = run(
        capsys,
        "--content",
        CONTENT,
        "--style",
        STYLE,
        "--style",
        str(SAMPLES / "the_scream.jpg"),
        "--style-weights",
        "0.7",
        "0.3",
        "-o",
        str(out),
        "--preset",
        "fast",
        "--init",
        "content",
        "--pooling",
        "avg",
        "--content-weight",
        "2",
        "--tv-weight",
        "0.1",
        "--scales",
        "0.5,1.0",
        "--preserve-colors",
        "luminance",
        "--save-every",
        "2",
        "--bit-depth",
        "16",
        *FAST,
    )
    assert rc == 0, err
    assert out.read_bytes()[24] == 16  # PNG IHDR bit depth
    assert decode_image(out.read_bytes()).size == (40, 30)
    snapshots = sorted(p.name for p in tmp_path.glob("blend_*.png"))
    assert snapshots == ["blend_00002.png", "blend_00004.png", "blend_00006.png"]


@pytest.mark.slow
def test_style_loss_and_a_scale_schedule(tmp_path, capsys):
    out = tmp_path / "w2.png"
    rc, stdout, err = run(
        capsys,
        "--content",
        CONTENT,
        "--style",
        STYLE,
        "-o",
        str(out),
        "--style-loss",
        "wasserstein2",
        "--scales",
        "20:2,40:3",
        "--save-every",
        "1",
        *FAST,
    )
    assert rc == 0, err
    assert decode_image(out.read_bytes()).size == (40, 30)
    assert "5 iterations" in stdout  # 2 at 20 px, then 3 at 40 px (not --iterations 3 each)
    snapshots = sorted(p.name for p in tmp_path.glob("w2_*.png"))
    assert snapshots == [f"w2_{i:05d}.png" for i in range(1, 6)]


def test_help_lists_the_style_losses(capsys):
    assert main(["image", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"--style-loss LOSS {' | '.join(STYLE_LOSSES)}:" in text
    assert "SIDE:ITERATIONS pairs" in text


def test_weights_from_an_fsspec_url(tmp_path, capsys):
    state, _ = load_caffe_state()
    buf = io.BytesIO()
    torch.save({f"features.{k}": v for k, v in state.items()}, buf)
    with fsspec.open("memory://weights/vgg19.pth", "wb") as f:
        f.write(buf.getvalue())
    out = tmp_path / "o.png"
    rc, _, err = run(
        capsys,
        "--content",
        CONTENT,
        "--style",
        STYLE,
        "-o",
        str(out),
        "--weights",
        "memory://weights/vgg19.pth",
        "--preprocessing",
        "caffe",
        *FAST,
    )
    assert rc == 0, err
    assert decode_image(out.read_bytes()).size == (40, 30)


def test_urls_in_and_out_through_fsspec(capsys):
    fs = fsspec.filesystem("memory")
    fs.pipe("/cli-in/tubingen.jpg", Path(CONTENT).read_bytes())
    rc, stdout, err = run(
        capsys,
        "--content",
        "memory://cli-in/tubingen.jpg",
        "--style",
        "pkg://stylize/samples/starry_night.jpg",
        "-o",
        "memory://cli-out/o.png",
        "--save-every",
        "2",
        *FAST,
    )
    assert rc == 0, err
    assert decode_image(fs.cat("/cli-out/o.png")).size == (40, 30)
    assert fs.exists("/cli-out/o_00002.png") and "wrote memory://cli-out/o.png" in stdout


def test_urls_go_through_the_callers_hooks(tmp_path, capsys):
    """``pipeline.image_cmd.main`` reads and writes URLs with the hooks it is given (fsspec's
    by default); a hook's failure is one line naming the option."""
    read: list[str] = []

    def refuse(uri: str) -> bytes:
        read.append(uri)
        raise PermissionError("not today")

    argv = ["--content", "memory://cli-in/x.jpg", "--style", STYLE, "-o", str(tmp_path / "o.png")]
    rc = image_cmd.main([*argv, *FAST], read_bytes=refuse)
    err = capsys.readouterr().err
    assert rc == 2 and read == ["memory://cli-in/x.jpg"]
    assert err == "stylize image: error: --content memory://cli-in/x.jpg: cannot read (not today)\n"


def test_an_output_that_cannot_be_written_exits_3_and_leaves_nothing(tmp_path, capsys):
    (tmp_path / "out.png").mkdir()  # the work is done, then the rename onto it fails
    rc, _, err = run(
        capsys, "--content", CONTENT, "--style", STYLE, "-o", str(tmp_path / "out.png"), *FAST
    )
    assert rc == 3 and "cannot write" in err and len(err.splitlines()) == 1, err
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes((SAMPLES / "coffee.jpg").read_bytes()[:3000])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return {"text": text, "truncated": truncated, "empty": empty}


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("missing", ["--content", "{tmp}/nope.jpg"], "nope.jpg: cannot read file"),
        ("text", ["--content", "{text}"], "notes.jpg: not an image"),
        ("truncated", ["--content", "{truncated}"], "cut.jpg: truncated or corrupt"),
        ("empty", ["--style", "{empty}"], "empty.png: empty file"),
        ("init", ["--init", "{text}"], "notes.jpg: not an image"),
        (
            "optimizer",
            ["--optimizer", "sgd"],
            "--optimizer: 'sgd' is not allowed; allowed: lbfgs, adam",
        ),
        (
            "pooling",
            ["--pooling", "median"],
            "--pooling: 'median' is not allowed; allowed: max, avg",
        ),
        ("preset", ["--preset", "monet"], "allowed: gatys2016, neural-style, fast"),
        ("colors", ["--preserve-colors", "sepia"], "allowed: none, luminance, histogram"),
        ("size", ["--size", "big"], "--size: expected an integer"),
        ("negative", ["--style-weight", "-1"], "--style-weight: must be >= 0"),
        ("layer", ["--style-layers", "relu9_1"], "--style-layers: unknown layer 'relu9_1'"),
        ("scales", ["--scales", "1.0,0.5"], "--scales: increasing fractions"),
        ("pairs", ["--scales", "40:2,20:3"], "--scales: [side, iterations] pairs need increasing"),
        (
            "lastside",
            ["--scales", "20:2,30:3"],
            "--scales: the last side (30) is the output's, but size is 40",
        ),
        (
            "styleloss",
            ["--style-loss", "sliced"],
            "--style-loss: 'sliced' is not allowed; allowed: gram, wasserstein2, mean_std",
        ),
        ("device", ["--device", "cuda"], "--device: cuda is not available"),
        ("weights", ["--weights", "{tmp}/none.pth"], "none.pth"),
        ("format", ["-o", "{tmp}/out.gif"], "--output: "),
        ("folder", ["-o", "{tmp}/no/such/dir/out.png"], "does not exist or is not writable"),
        (
            "bitdepth",
            ["-o", "{tmp}/out.jpg", "--bit-depth", "16"],
            "--bit-depth: 16 is only for png, tiff, not jpeg",
        ),
        ("bitdepth12", ["--bit-depth", "12"], "invalid choice: 12 (choose from 8, 16)"),
        ("quality", ["-o", "{tmp}/out.jpg", "--quality", "0"], "--quality: 1 to 100, got 0"),
        (
            "url",
            ["--content", "memory://nope/none.jpg"],
            "--content memory://nope/none.jpg: cannot",
        ),
        ("scheme", ["--style", "nosuch://b/s.jpg"], "--style nosuch://b/s.jpg: cannot read"),
        ("blend", ["--style-weights", "1", "2"], "--style-weights: 2 weights for 1 --style"),
        ("unknown", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch, case, args, message):
    if case == "device":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    paths = {k: str(v) for k, v in _bad_files(tmp_path).items()}
    args = [a.format(tmp=tmp_path, **paths) for a in args]
    base = {"--content": CONTENT, "--style": STYLE, "-o": str(tmp_path / "out.png")}
    for flag in list(base):
        if flag in args:
            del base[flag]
    argv = [x for kv in base.items() for x in kv] + FAST + args  # the last value wins
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert message in lines[0]


def test_help_lists_the_allowed_values_of_every_option_with_a_fixed_set(capsys):
    """Every engine option typed as a choice shows its choices in --help."""
    import typing

    from pipeline.image_cmd import _allowed
    from stylize.config import StyleConfig

    assert main(["image", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    checked = 0
    for name, field in StyleConfig.model_fields.items():
        allowed = _allowed(field.annotation)
        if not allowed or name in ("preset", "content_layers", "style_layers"):
            continue
        flag = "--" + name.replace("_", "-")
        assert f"{' | '.join(map(str, allowed))}" in text.split(flag, 2)[-1][:300], flag
        checked += 1
    assert checked >= 7  # pooling, padding, preprocessing, precision, style_loss, ...
    assert "gatys2016" in text and "gram | wasserstein2 | mean_std" in text
    assert typing.get_args(StyleConfig.model_fields["pooling"].annotation) == ("max", "avg")


def test_json_prints_one_object_with_the_documented_keys(tmp_path, capsys):
    import json

    out = tmp_path / "out.png"
    rc, stdout, err = run(
        capsys, "--content", CONTENT, "--style", STYLE, "-o", str(out), *FAST, "--json"
    )
    assert rc == 0, err
    obj = json.loads(stdout)
    assert set(obj) == {
        "command",
        "exit_code",
        "output",
        "width",
        "height",
        "iterations",
        "total_loss",
        "content_loss",
        "style_loss",
        "seconds",
        "device",
    }
    assert (obj["output"], obj["width"], obj["height"], obj["exit_code"]) == (str(out), 40, 30, 0)
    assert obj["total_loss"] > 0 and obj["device"] == "cpu"
    rc, stdout, err = run(
        capsys, "--content", "nope.jpg", "--style", STYLE, "-o", str(out), "--json"
    )
    assert rc == 2 and json.loads(stdout)["exit_code"] == 2 and "nope.jpg" in err


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
@pytest.mark.slow
def test_interrupted_keeps_the_last_iterate_and_exits_with_one_line(tmp_path, sig, code):
    """Ctrl-C (or a SIGTERM) while optimising: exit 128+N, one line naming the image kept,
    the last iterate written beside the output as out.interrupted.png; no traceback."""
    import signal
    import time

    from conftest import no_traceback, start_process, stylize_command, subprocess_env

    out = tmp_path / "out.png"
    cmd = stylize_command(
        "image", "--content", CONTENT, "--style", STYLE, "-o", str(out), "--size", "64",
        "--iterations", "5000", "--save-every", "5", "--device", "cpu", "-q",
    )  # fmt: skip
    proc = start_process(cmd, subprocess_env(), tmp_path / "logs", "image")
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("out_*.png")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.log_err.read_text()
            time.sleep(0.2)
        assert list(tmp_path.glob("out_*.png")), "no step within 2 minutes"
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(60) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.log_err.read_text()
    kept = tmp_path / "out.interrupted.png"
    assert err.count("\n") == 1 and no_traceback(err), err
    assert err.startswith(f"stylize image: interrupted: {sig} at step "), err
    assert str(kept) in err and not out.exists()
    assert decode_image(kept.read_bytes()).size == (64, 48)
