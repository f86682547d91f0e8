"""Fixtures of the pipeline tests: bundled sample images, bad files, a local Ray instance,
and moto's S3 server on 127.0.0.1 (reached by the Ray workers through storage_options)."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest

SAMPLES = Path(str(resources.files("stylize") / "samples"))
# Tiny and quick: every end-to-end job in these tests uses these engine settings.
TINY = {"preset": "fast", "size": 48, "iterations": 5}


def sample(name: str) -> Path:
    return SAMPLES / f"{name}.jpg"


def make_inputs(root: Path, good: dict[str, str], bad: bool = True) -> Path:
    """A folder of content images: ``good`` maps relative path -> sample name; ``bad`` adds
    an empty, a truncated and a non-image file."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, name in good.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample(name), root / rel)
    if bad:
        (root / "empty.jpg").write_bytes(b"")
        (root / "truncated.jpg").write_bytes(sample("tubingen").read_bytes()[:2000])
        (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray instance (2 CPUs) for every end-to-end test; shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a free port of 127.0.0.1; returns its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_options(s3_endpoint):
    """storage_options for s3fs against the moto server (fake credentials)."""
    return {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing",
            "client_kwargs": {"region_name": "eu-west-1"}}
