"""Storage faults caused for real: S3 on moto behind a loopback proxy that answers 503
SlowDown, resets connections, or stops answering for a while (tests/s3_fault_proxy.py); and
a stale temporary manifest part in a local run.

What each test shows: the faults really reached the pipeline (the proxy counts them; botocore's
own retries are off, see ``S3FaultProxy.storage_options``), and the run still ends with every
item exactly once, or stops cleanly and resumes.
"""

from __future__ import annotations

import io
import time

import pyarrow.parquet as pq
import pytest
from conftest import (
    TINY,
    cli_main,
    fresh_s3,
    no_traceback,
    proxy_storage_options,
    run_process,
    sample,
    stylize_command,
    subprocess_env,
    write_job,
)

CONTENTS = {"tubingen.jpg": "tubingen", "cat.jpg": "chelsea", "coffee.jpg": "coffee"}


def _put_inputs(
    fs,
    bucket: str,
    contents: dict[str, str],
    styles=("starry_night",),
    extra: dict[str, bytes] | None = None,
) -> None:
    for name, sample_name in contents.items():
        fs.pipe(f"{bucket}/in/{name}", sample(sample_name).read_bytes())
    for name, data in (extra or {}).items():
        fs.pipe(f"{bucket}/in/{name}", data)
    for s in styles:
        fs.pipe(f"{bucket}/styles/{s}.jpg", sample(s).read_bytes())


def _raw_job(bucket: str, options: dict, **changes) -> dict:
    return {
        "input": f"s3://{bucket}/in/",
        "styles": f"s3://{bucket}/styles/",
        "output": f"s3://{bucket}/out",
        "stylize": TINY,
        "shard_size": 1,
        "storage_options": options,
        "ray": {"num_workers": 2},
        **changes,
    }


def _rows(s3_options: dict, bucket: str) -> list[dict]:
    fs = fresh_s3(s3_options)
    return pq.read_table(io.BytesIO(fs.cat(f"{bucket}/out/manifest.parquet"))).to_pylist()


def _check_once_each(rows: list[dict], expected: set[tuple[str, str]]) -> None:
    """One row per item: no item missing, none twice."""
    keys = [(r["content_uri"].rsplit("/", 1)[-1], r["style"]) for r in rows]
    assert sorted(keys) == sorted(expected), keys
    assert len({r["item_id"] for r in rows}) == len(rows)


def _expected(contents, styles=("starry_night",)) -> set[tuple[str, str]]:
    return {(c, s) for c in contents for s in styles}


# ------------------------------------------------------------------------ the proxy itself


def test_fault_proxy_really_fails_requests(s3_proxy, s3_options, s3_bucket):
    """The infrastructure, without the pipeline: s3fs through the proxy sees 503s, resets, a
    refused endpoint, faults limited to PUTs under a prefix, and an outage armed by a trigger;
    the proxy counts each."""
    fs = fresh_s3(proxy_storage_options(s3_proxy))
    direct = fresh_s3(s3_options)
    fs.pipe(f"{s3_bucket}/a/x.bin", b"x" * 1000)
    assert direct.cat(f"{s3_bucket}/a/x.bin") == b"x" * 1000
    assert s3_proxy.summary() == {"forwarded": s3_proxy.count("forwarded")}

    # random and every-n faults: s3fs's few retries ride them out, but they were there
    s3_proxy.faults(rate_503=0.2, rate_reset=0.05)
    s3_proxy.every(3, "503", methods={"PUT"})
    for i in range(10):
        fs.pipe(f"{s3_bucket}/a/{i}.bin", bytes([i]) * 100)
    assert all(fs.cat(f"{s3_bucket}/a/{i}.bin") == bytes([i]) * 100 for i in range(10))
    assert s3_proxy.count("503", method="PUT") >= 3 and s3_proxy.count("503") >= 4
    s3_proxy.clear()

    # full outages longer than s3fs's retries (~2 s of back-off, more on a loaded CI machine:
    # 6.2 s once): the client gets the error
    outage_s = 10.0
    for kind in ("503", "reset", "refuse"):
        s3_proxy.outage(outage_s, kind)
        t0 = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - botocore's or aiohttp's, by kind
            fresh_s3(proxy_storage_options(s3_proxy)).pipe(f"{s3_bucket}/a/out.bin", b"1")
        gave_up_s = time.monotonic() - t0
        assert gave_up_s < outage_s, kind  # the client gave up during the outage
        print(f"{kind}: the client gave up after {gave_up_s:.1f} s")
        time.sleep(max(0.0, outage_s + 0.5 - (time.monotonic() - t0)))
        fresh_s3(proxy_storage_options(s3_proxy)).pipe(f"{s3_bucket}/a/out.bin", b"1")
        s3_proxy.clear()
    assert s3_proxy.count("reset") >= 1 and s3_proxy.refusals == 1

    # only PUTs under _manifest/, from the first PUT of a part on
    s3_proxy.outage(
        None,
        methods={"PUT"},
        path_contains="/_manifest/",
        after=lambda r: r.method == "PUT" and "/part-" in r.path,
    )
    fs.pipe(f"{s3_bucket}/o/_manifest/part-00000.parquet", b"p0")  # the trigger: forwarded
    fs.pipe(f"{s3_bucket}/o/img.png", b"img")
    with pytest.raises(Exception):  # noqa: B017 - whichever the client raises for a 503
        fs.pipe(f"{s3_bucket}/o/_manifest/part-00001.parquet", b"p1")
    assert fs.cat(f"{s3_bucket}/o/_manifest/part-00000.parquet") == b"p0"
    assert not direct.exists(f"{s3_bucket}/o/_manifest/part-00001.parquet")
    assert s3_proxy.count("503", path_contains="part-00001") >= 2


# ------------------------------------------------------------------- the pipeline through it


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(400)
def test_s3_through_503s_and_resets(s3_proxy, s3_options, s3_bucket, tmp_path, capsys):
    """Input and output through the proxy with ~15% 503s, some resets, every 4th PUT refused
    and every 7th PUT applied but its answer lost: exit 0, every item ok, once each."""
    direct = fresh_s3(s3_options)
    _put_inputs(direct, s3_bucket, CONTENTS)
    s3_proxy.every(4, "503", methods={"PUT"})
    s3_proxy.every(7, "reset_after", methods={"PUT"})
    s3_proxy.every(6, "reset", methods={"GET", "HEAD"})
    s3_proxy.faults(rate_503=0.15, rate_reset=0.03)
    job = write_job(
        tmp_path / "job.yaml", _raw_job(s3_bucket, proxy_storage_options(s3_proxy), io_retry_s=30)
    )

    code = cli_main(["run", str(job)])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert no_traceback(err), err[-3000:]
    rows = _rows(s3_options, s3_bucket)
    _check_once_each(rows, _expected(CONTENTS))
    assert all(r["status"] == "ok" for r in rows), rows
    for r in rows:  # every output is there, whole
        assert direct.cat(r["output_uri"].removeprefix("s3://"))[:8] == b"\x89PNG\r\n\x1a\n"
    summary = s3_proxy.summary()
    assert s3_proxy.count("503", method="PUT") >= 3, summary
    assert s3_proxy.count("reset_after") >= 1 and s3_proxy.count("reset") >= 1, summary
    assert s3_proxy.injected >= 0.1 * len(s3_proxy.entries()), summary


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(480)
@pytest.mark.parametrize("kind", ["503", "refuse"])
def test_s3_outage_of_20_s_mid_job(kind, s3_proxy, s3_options, s3_bucket, tmp_path, capsys):
    """Every request fails for 20 s, from the moment the first manifest part is written (work
    in flight and queued). With io_retry_s: 40 every item is ok in the end, once each, and the
    pipeline kept trying through the outage rather than giving items up."""
    contents = {**CONTENTS, "scream.jpg": "the_scream"}
    direct = fresh_s3(s3_options)
    _put_inputs(direct, s3_bucket, contents)
    outage = s3_proxy.outage(
        20,
        kind,
        after=lambda r: r.method == "PUT" and r.path.rsplit("/", 1)[-1].startswith("part-"),
    )
    job = write_job(
        tmp_path / "job.yaml", _raw_job(s3_bucket, proxy_storage_options(s3_proxy), io_retry_s=40)
    )

    code = cli_main(["run", str(job)])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert no_traceback(err), err[-3000:]
    rows = _rows(s3_options, s3_bucket)
    _check_once_each(rows, _expected(contents))
    assert all(r["status"] == "ok" for r in rows), [(r["status"], r["error_message"]) for r in rows]

    assert outage.triggered_at is not None, "the job wrote no part through the proxy"
    start, end = outage.start, outage.until
    summary = s3_proxy.summary()
    if kind == "refuse":
        # refused connections never reach the proxy: what it logs are the requests on
        # connections opened before the outage, reset
        assert s3_proxy.refusals == 1
    else:
        failed = s3_proxy.entries(kind, since=start, until=end)
        assert len(failed) >= 3, summary
        # the workers' own reads and writes were hit, not only the driver's manifest writes
        assert any("/_manifest/" not in e.path for e in failed), [
            (e.method, e.path) for e in failed
        ]
        # clients were still trying in the second half of the outage
        assert max(e.t for e in failed) >= start + 10, [round(e.t - start, 1) for e in failed]
    # and carried on after it: parts and outputs written after the outage ended
    after = s3_proxy.entries("forwarded", since=end)
    assert any(e.method == "PUT" and "/_manifest/part-" in e.path for e in after), summary
    assert any(e.method == "PUT" and "/_manifest/" not in e.path for e in after), summary


@pytest.mark.timeout(600)
def test_manifest_writes_down_longer_than_io_retry_s(
    s3_proxy, s3_options, s3_bucket, tmp_path, ray_tmpdir
):
    """The driver cannot write manifest parts (PUTs under _manifest/ fail from the first part
    on) for longer than io_retry_s: ``stylize run`` exits 3 with a one-line message and no
    traceback, the part written before stays, and a rerun after the outage finishes with
    every item exactly once, without redoing the kept part."""
    contents = {**CONTENTS, "scream.jpg": "the_scream"}
    direct = fresh_s3(s3_options)
    _put_inputs(direct, s3_bucket, contents)
    s3_proxy.outage(
        None,
        methods={"PUT", "POST"},
        path_contains="/_manifest/",
        after=lambda r: r.method == "PUT" and r.path.rsplit("/", 1)[-1].startswith("part-"),
    )
    job = write_job(
        tmp_path / "job.yaml",
        _raw_job(s3_bucket, proxy_storage_options(s3_proxy), io_retry_s=3, ray={"num_workers": 1}),
    )
    env = subprocess_env(ray_tmpdir)

    code, out, err, _ = run_process(stylize_command("run", str(job)), env, tmp_path, "run1", 300)
    assert code == 3, f"exit {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}"
    assert no_traceback(err), err[-3000:]
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("stylize run:") and "run the same command to resume" in last, err
    assert s3_proxy.count("503", path_contains="/_manifest/") >= 2, s3_proxy.summary()
    assert "testing" not in err  # the fake secret never shows

    direct.invalidate_cache()
    names = [p.rsplit("/", 1)[-1] for p in direct.ls(f"{s3_bucket}/out/_manifest", detail=False)]
    parts = sorted(n for n in names if n.startswith("part-"))
    assert parts and parts[0] == "part-00000.parquet", names
    kept = {}
    for p in parts:  # each part is whole
        for r in pq.read_table(
            io.BytesIO(direct.cat(f"{s3_bucket}/out/_manifest/{p}"))
        ).to_pylist():
            kept[r["item_id"]] = r
    assert 1 <= len(kept) < len(contents)

    s3_proxy.clear()
    code, out, err, _ = run_process(stylize_command("run", str(job)), env, tmp_path, "run2", 300)
    assert code == 0, f"exit {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}"
    assert no_traceback(err)
    rows = _rows(s3_options, s3_bucket)
    _check_once_each(rows, _expected(contents))
    assert all(r["status"] == "ok" for r in rows)
    by_id = {r["item_id"]: r for r in rows}
    for item_id, r in kept.items():  # what was saved before the outage was not redone
        assert by_id[item_id]["finished_at"] == r["finished_at"]


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(400)
def test_item_unreadable_longer_than_io_retry_s_is_failed_io(
    s3_proxy, s3_options, s3_bucket, tmp_path, capsys
):
    """Reads of one content object fail (503) for longer than io_retry_s: that item becomes
    ``failed_io`` and the others finish. A resume with ``retry_failed: none`` keeps it
    failed; the default (``transient``) redoes it to ok, and leaves ``failed_decode`` alone."""
    direct = fresh_s3(s3_options)
    truncated = sample("coffee").read_bytes()[:600]
    _put_inputs(
        direct,
        s3_bucket,
        {"a.jpg": "tubingen", "b.jpg": "chelsea"},
        extra={"broken.jpg": truncated},
    )
    s3_proxy.outage(None, methods={"GET"}, path_contains=f"/{s3_bucket}/in/b.jpg")
    job = write_job(
        tmp_path / "job.yaml", _raw_job(s3_bucket, proxy_storage_options(s3_proxy), io_retry_s=3)
    )

    def statuses():
        return {r["content_uri"].rsplit("/", 1)[-1]: r for r in _rows(s3_options, s3_bucket)}

    code = cli_main(["run", str(job)])
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    first = statuses()
    assert {k: r["status"] for k, r in first.items()} == {
        "a.jpg": "ok",
        "b.jpg": "failed_io",
        "broken.jpg": "failed_decode",
    }
    assert "b.jpg" in first["b.jpg"]["error_message"]
    assert s3_proxy.count("503", path_contains="/in/b.jpg") >= 2, s3_proxy.summary()

    s3_proxy.clear()
    code = cli_main(["run", str(job), "--set", "retry_failed=none"])
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    second = statuses()
    assert second["b.jpg"]["status"] == "failed_io"
    assert second["b.jpg"]["finished_at"] == first["b.jpg"]["finished_at"]  # not tried again

    code = cli_main(["run", str(job)])
    err = capsys.readouterr().err
    assert code == 1 and no_traceback(err), err[-3000:]  # broken.jpg stays failed_decode
    third = statuses()
    assert {k: r["status"] for k, r in third.items()} == {
        "a.jpg": "ok",
        "b.jpg": "ok",
        "broken.jpg": "failed_decode",
    }
    assert third["a.jpg"]["finished_at"] == first["a.jpg"]["finished_at"]
    assert third["broken.jpg"]["finished_at"] == first["broken.jpg"]["finished_at"]
    _check_once_each(list(third.values()), _expected(["a.jpg", "b.jpg", "broken.jpg"]))


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(300)
def test_stale_temporary_part_is_ignored_and_cleaned(tmp_path, capsys):
    """A half-written ``_manifest/.tmp-abc-part-00001.parquet`` (disk full, or a crash between
    open and rename) next to a finished run: ``stylize status`` and ``stylize run`` work, the
    run recomputes nothing, and the temporary file is gone afterwards."""
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "job.yaml",
        {
            "input": [str(sample("tubingen"))],
            "styles": [str(sample("starry_night"))],
            "output": str(out),
            "stylize": TINY,
            "ray": {"num_workers": 1},
        },
    )
    assert cli_main(["run", str(job)]) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    part = out / "_manifest" / "part-00000.parquet"
    stale = out / "_manifest" / ".tmp-abc-part-00001.parquet"
    stale.write_bytes(part.read_bytes()[: len(part.read_bytes()) // 2])
    capsys.readouterr()

    assert cli_main(["status", str(out)]) == 0
    got = capsys.readouterr()
    assert no_traceback(got.err) and "1" in got.out, got

    assert cli_main(["run", str(job)]) == 0
    got = capsys.readouterr()
    assert no_traceback(got.err), got.err
    assert not stale.exists(), sorted(p.name for p in (out / "_manifest").iterdir())
    assert not list((out / "_manifest").glob(".tmp-*"))
    again = pq.read_table(out / "manifest.parquet").to_pylist()
    assert again == rows  # nothing recomputed, nothing added

    assert cli_main(["status", str(out)]) == 0
    assert no_traceback(capsys.readouterr().err)
