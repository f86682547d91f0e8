"""Stylize images inside a Ray Data pipeline (docs/raydata.md), then write Parquet or
WebDataset shards with Ray Data's own writers.

With no arguments: the photos bundled with the package under two bundled paintings, at 64 px,
on the CPU of this machine (a private local Ray instance), into ./outputs/raydata::

    python examples/raydata_stylize.py
    python examples/raydata_stylize.py --format webdataset --random 1 --seed 3

On a GPU cluster (one actor per GPU, images from and to object storage)::

    python examples/raydata_stylize.py --address auto --input s3://bucket/photos/ \\
        --styles s3://bucket/paintings/ --output s3://bucket/stylized/ \\
        --actors 8 --gpus 1 --size 512 --iterations 500 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

SAMPLES = resources.files("stylize") / "samples"
SAMPLE_PHOTOS = ("tubingen", "chelsea", "coffee", "shipwreck")
SAMPLE_STYLES = ("starry_night", "the_scream")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--input",
        nargs="+",
        help="files or folders that read_binary_files reads (default: the bundled photos)",
    )
    p.add_argument(
        "--styles",
        help="a folder, glob or one image, as a job's styles: (default: two bundled paintings)",
    )
    p.add_argument("--output", default="outputs/raydata", help="folder or URL to write to")
    p.add_argument("--format", choices=("parquet", "webdataset"), default="parquet")
    p.add_argument("--size", type=int, default=64, help="longest side of the outputs")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--preset", default="fast")
    p.add_argument(
        "--random",
        type=int,
        metavar="K",
        help="K styles drawn per photo (assign: random) instead of every style",
    )
    p.add_argument("--seed", type=int, default=0, help="of the draw (assign.seed)")
    p.add_argument("--actors", type=int, default=1, help="stylizing actors (VGG-19 each)")
    p.add_argument("--gpus", type=float, default=0, help="GPUs per actor (0: CPU)")
    p.add_argument("--batch-size", type=int, default=4, help="rows per call of the stage")
    p.add_argument(
        "--address",
        default="local",
        help="local: a private Ray instance; auto or host:port: a cluster",
    )
    return p.parse_args(argv)


def stage_keys(args: argparse.Namespace) -> dict[str, Any]:
    """The job keys of the stage: what a job file would say under these names."""
    styles: Any = args.styles or {s: str(SAMPLES / f"{s}.jpg") for s in SAMPLE_STYLES}
    keys: dict[str, Any] = {
        "styles": styles,
        "output_format": "png",
        "stylize": {"preset": args.preset, "size": args.size, "iterations": args.iterations},
    }
    if args.random:
        keys["assign"] = {"random": args.random, "seed": args.seed}
    return keys


def to_sample(row: dict[str, Any]) -> dict[str, Any]:
    """A WebDataset sample: the image as {key}.png, everything else as {key}.json."""
    import posixpath

    stem = posixpath.splitext(posixpath.basename(row["path"]))[0]
    meta = {k: v for k, v in row.items() if k not in ("stylized", "path")}
    return {
        "__key__": f"{stem}__{row['style']}",
        "png": row["stylized"],
        "json": json.dumps({"path": row["path"], **meta}),
    }


def run(args: argparse.Namespace):
    """Build and run the pipeline; returns the rows' statuses (a pyarrow Table's column)."""
    import ray

    from pipeline.raydata import StylizeBatch, check_settings

    keys = stage_keys(args)
    check_settings(**keys)  # a bad key or style stops here, before any actor starts
    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False, logging_level="ERROR")
    inputs = args.input or [str(SAMPLES / f"{p}.jpg") for p in SAMPLE_PHOTOS]
    ds = ray.data.read_binary_files(inputs, include_paths=True)
    ds = ds.map_batches(
        StylizeBatch,
        fn_constructor_kwargs=keys,
        batch_size=args.batch_size,
        compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_gpus=args.gpus,
    )
    ds = ds.materialize()  # stylized once; the writes and the summary read the result
    if args.format == "parquet":
        ds.write_parquet(args.output)
    else:
        # the stage's images are encoded already: encoder=None writes the bytes as they are
        from ray.data.expressions import col

        ok = ds.filter(expr=col("status") == "ok")
        ok.map(to_sample).write_webdataset(args.output, encoder=None)
    return ds.select_columns(["path", "style", "status", "error_message"]).take_all()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    for r in rows:
        print(
            f"{r['status']:14} {r['style']:14} {r['path']}"
            + (f"  ({r['error_message']})" if r["error_message"] else "")
        )
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed} ok, {failed} failed; written to {args.output} ({args.format})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
