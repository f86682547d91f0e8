"""Job files: validation, unknown keys, --set overrides, hashes (no Ray, no engine runs)."""

from __future__ import annotations

import time

import pytest

from pipeline.jobconfig import JobConfigError, apply_overrides, job_from_mapping, load_job

BASE = {"input": "in", "styles": ["a.jpg"], "output": "out"}


def job(**changes):
    return job_from_mapping({**BASE, **changes})


def test_keys_given_and_aliases():
    j = job(
        stylize={"preset": "fast", "size": 64},
        shard_size=4,
        mode="overwrite",
        max_attempts=2,
        item_timeout_s=60,
        output_format="jpg",
        storage_options={"endpoint_url": "http://x"},
        ray={"address": None, "num_workers": "auto", "gpus_per_worker": 1, "cpus_per_worker": 1},
    )
    assert j.stylize.size == 64 and j.stylize.preset == "fast"
    assert (j.shard_size, j.mode, j.max_attempts, j.item_timeout_s) == (4, "overwrite", 2, 60.0)
    assert j.output_format == "jpeg"
    assert j.ray.num_workers == "auto" and j.ray.address is None
    assert not j.grid.enabled


def test_unknown_key_names_it_and_the_allowed_keys():
    with pytest.raises(JobConfigError, match=r"unknown key 'shards'.*allowed keys: input, styles"):
        job(shards=3)
    with pytest.raises(JobConfigError, match=r"unknown key 'ray.gpus'.*gpus_per_worker"):
        job(ray={"gpus": 1})
    with pytest.raises(
        JobConfigError, match=r"unknown key 'stylize.iters'; did you mean 'stylize.iterations'"
    ):
        job(stylize={"iters": 3})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mode": "again"}, r"mode: 'again' is not allowed; allowed: resume, overwrite"),
        ({"output_format": "gif"}, r"output_format: 'gif' is not allowed"),
        ({"shard_size": 0}, r"shard_size: must be >= 1"),
        ({"item_timeout_s": 0}, r"item_timeout_s: must be > 0"),
        (
            {"ray": {"num_workers": "many"}},
            r"ray.num_workers: expected auto or an integer, got 'many'",
        ),
        ({"stylize": {"size": "big"}}, r"stylize.size: expected an integer, got 'big'"),
        ({"output_bit_depth": 16, "output_format": "jpeg"}, r"output_bit_depth"),
        ({"styles": []}, r"styles: must not be empty"),
        ({"output": "memory://out"}, r"memory:// .*ray.address: inline"),
        # a check that quotes the value itself: quoted once, not twice
        (
            {"stylize": {"scales": "foo"}},
            r"stylize.scales: increasing .*\(256:400,512:150\); got \['foo'\]$",
        ),
        ({"stylize": {"scales": [[256, 0]]}}, r"iterations >= 1, got \[\[256, 0\]\]$"),
    ],
)
def test_bad_values_are_named(changes, message):
    with pytest.raises(JobConfigError, match=message):
        job(**changes)


def test_style_forms():
    j = job(
        styles={
            "starry": "s.jpg",
            "mix": [{"uri": "a.jpg", "weight": 2}, "b.jpg"],
            "one": {"uri": "c.jpg", "weight": 0.5},
        }
    )
    by_name = {s.name: s for s in j.styles}
    assert by_name["mix"].uris == ("a.jpg", "b.jpg") and by_name["mix"].weights == (2.0, 1.0)
    assert by_name["one"].weights == (0.5,)
    assert job(styles="styles/").styles == "styles/"
    assert job(styles=["x.jpg"]).styles[0].name is None
    with pytest.raises(JobConfigError, match=r"unknown key 'styles.one.w'"):
        job(styles={"one": {"uri": "c.jpg", "w": 1}})


def test_set_overrides_are_yaml_typed():
    raw = apply_overrides(
        BASE,
        [
            "stylize.size=64",
            "ray.num_workers=2",
            "grid=true",
            "styles=[a.jpg, b.jpg]",
            "stylize.style_weight=1.0e4",
            "ray.address=auto",
        ],
    )
    j = job_from_mapping(raw)
    assert j.stylize.size == 64 and j.ray.num_workers == 2 and j.grid.enabled
    assert [s.uris[0] for s in j.styles] == ["a.jpg", "b.jpg"]
    assert j.stylize.style_weight == 1e4 and j.ray.address == "auto"
    j = job_from_mapping(apply_overrides({**BASE, "grid": True}, ["grid.cell_size=64"]))
    assert j.grid.enabled and j.grid.cell_size == 64
    with pytest.raises(JobConfigError, match="expected KEY=VALUE"):
        apply_overrides(BASE, ["stylize.size"])
    with pytest.raises(JobConfigError, match=r"unknown key 'stylise'"):
        job_from_mapping(apply_overrides(BASE, ["stylise.size=3"]))


def test_load_job_file_set_and_mode(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: in\nstyles: [a.jpg]\noutput: out\nstylize: {size: 32}\n")
    j = load_job(str(path), ["stylize.iterations=7"], mode="overwrite")
    assert (j.stylize.size, j.stylize.iterations, j.mode) == (32, 7, "overwrite")
    with pytest.raises(JobConfigError, match="no such job file"):
        load_job(str(tmp_path / "missing.yaml"))
    path.write_text("input: in\nstyles: [a.jpg\noutput: out\n")
    with pytest.raises(JobConfigError, match=r"not valid YAML: line 3, column 7"):
        load_job(str(path))


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "input: in\nstyles: [a.jpg]\noutput: out\nshard_sise: 4\n"
        "ray: {num_workers: 0}\noutput_format: gif\n"
    )
    with pytest.raises(JobConfigError) as e:
        load_job(str(path))
    lines = str(e.value).splitlines()
    assert lines[0].endswith("job.yaml: 3 problems:")
    assert sorted(lines[1:]) == sorted(
        [
            "unknown key 'shard_sise'; did you mean 'shard_size'? (allowed keys: input, styles, "
            "output, stylize, shard_size, mode, max_attempts, item_timeout_s, retry_failed, "
            "io_retry_s, lease_timeout_s, output_format, output_quality, output_bit_depth, extensions, input_column, limit, "
            "storage_options, ray, grid, report, assign, layout, container, sweep, masks, target_cache_mb, artfid_weights)",
            "ray.num_workers: must be >= 1, got 0",
            "output_format: 'gif' is not allowed; allowed: png, jpeg, webp, tiff",
        ]
    )


def test_params_hash_follows_outputs_not_devices():
    a = job(stylize={"size": 64})
    assert a.params_hash == job(stylize={"size": 64, "device": "cpu", "batch_size": 2}).params_hash
    assert a.params_hash != job(stylize={"size": 65}).params_hash
    assert a.params_hash != job(stylize={"size": 64}, output_format="jpeg").params_hash


def test_to_dict_redacts_secrets():
    d = job(storage_options={"key": "AKIA", "secret": "s", "endpoint_url": "http://e"}).to_dict()
    assert d["storage_options"] == {"key": "***", "secret": "***", "endpoint_url": "http://e"}
    assert d["stylize"]["size"] == 512


def test_dataset_keys_and_their_mistakes():
    j = job(
        assign={"random": 2},
        layout="mirror",
        container="webdataset",
        sweep={"style_weight": [1e2, 1e3], "style_layers": [["relu1_1"], ["relu2_1"]]},
    )
    assert j.assign.random == 2 and j.assign.seed == 0
    assert len(j.sweep_points()) == 4 and j.sweep_points()[1] == {
        "style_weight": 1e2,
        "style_layers": ["relu2_1"],
    }
    assert len(set(j.point_hashes())) == 4 and job().point_hashes() == [job().params_hash]
    assert j.point_options(j.sweep_points()[3]).style_layers == ("relu2_1",)
    # values as the engine reads them, whatever their spelling ('1e4' is what YAML makes
    # of 1e4 and --sweep of [1000,1e4]): one type per column of the manifest
    typed = job(sweep={"style_weight": [1000, "1e4"], "style_layers": ["relu1_1,relu2_1"]})
    assert typed.sweep == {
        "style_weight": [1000.0, 10000.0],
        "style_layers": [["relu1_1", "relu2_1"]],
    }
    with pytest.raises(JobConfigError) as err:
        job(assign={"random": 0}, layout="tree", sweep={"pooling": ["max"], "size": [8]})
    lines = str(err.value).splitlines()
    assert any(ln.startswith("assign") for ln in lines)
    assert any("layout: 'tree' is not allowed; allowed: by_style, mirror" in ln for ln in lines)
    assert any("pooling: builds the network" in ln for ln in lines)
    with pytest.raises(JobConfigError, match=r"sweep \{'size': 8\}: size: must be >= 16"):
        job(sweep={"size": [64, 8]})
    with pytest.raises(JobConfigError, match="did you mean 'style_weight'"):
        job(sweep={"style_wieght": [1.0]})


# ------------------------------------------------------------------ job files written to hurt


def _job_file(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    # a second stylize: block would silently turn a 32 px trial into 512 px x 500 iterations
    path = _job_file(
        tmp_path,
        "input: in\nstyles: [a.jpg]\noutput: out\n"
        "stylize: {size: 32}\nshard_size: 4\n"
        "stylize: {size: 512, iterations: 500}\n",
    )
    with pytest.raises(
        JobConfigError,
        match=r"line 6, column 1: key 'stylize' given twice "
        r"\(first on line 4\)",
    ):
        load_job(path)
    nested = _job_file(
        tmp_path,
        "input: in\nstyles: [a.jpg]\noutput: out\n"
        "stylize:\n  size: 32\n  iterations: 5\n  size: 64\n",
    )
    with pytest.raises(JobConfigError, match=r"line 7, column 3: key 'size' given twice"):
        load_job(nested)
    with pytest.raises(JobConfigError, match="given twice"):
        apply_overrides({}, ["stylize={size: 1, size: 2}"])
    # a merge key brings keys the mapping's own override, as YAML means it: no duplicate
    merged = _job_file(
        tmp_path,
        "input: in\nstyles: [a.jpg]\noutput: out\n"
        "stylize:\n  size: 32\n  <<: {size: 64, iterations: 7}\n",
    )
    assert (load_job(merged).stylize.size, load_job(merged).stylize.iterations) == (32, 7)


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    # nine levels of nine aliases each: 387 million strings if expanded
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = _job_file(
        tmp_path, "\n".join(["input: in", "styles: [a.jpg]", "output: out"] + lines) + "\n"
    )
    t0 = time.perf_counter()
    with pytest.raises(
        JobConfigError,
        match=r"line 5, column \d+: aliases \(\*name\) are not "
        r"allowed in a job file",
    ):
        load_job(path)
    assert time.perf_counter() - t0 < 1.0


def test_a_huge_or_deep_job_file_is_refused_at_once(tmp_path):
    path = _job_file(
        tmp_path, "input: in\nstyles: [a.jpg]\noutput: out\n" + "# padding\n" * 5_000_000
    )  # 50 MB
    t0 = time.perf_counter()
    with pytest.raises(
        JobConfigError,
        match=r"larger than 1024 KiB, too large for a job file; "
        r"put a long list of inputs in a list file",
    ):
        load_job(path)
    assert time.perf_counter() - t0 < 1.0
    deep = _job_file(
        tmp_path,
        "input: in\nstyles: [a.jpg]\noutput: out\nx: " + "[" * 10_000 + "]" * 10_000 + "\n",
    )
    t0 = time.perf_counter()
    with pytest.raises(JobConfigError, match=r"nested more than 32 levels deep"):
        load_job(deep)
    assert time.perf_counter() - t0 < 1.0


def test_the_command_exits_2_with_one_line_on_a_hostile_job_file(tmp_path, capsys):
    from pipeline.cli import main

    path = _job_file(
        tmp_path, "input: in\nstyles: [a.jpg]\noutput: out\nbase: &b {size: 32}\nstylize: *b\n"
    )
    assert main(["run", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aliases (*name) are not allowed" in err[0], err
