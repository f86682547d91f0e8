"""Work items, output paths, shards and batch plans (no Ray, no engine)."""

from __future__ import annotations

import pytest

from pipeline.items import (
    Content,
    Plan,
    StyleRef,
    make_items,
    make_shards,
    output_uri,
    sanitize_relpath,
)
from pipeline.manifest import make_row
from pipeline.worker import plan_batches

STYLES = [
    StyleRef("starry", ("/s/starry.jpg",), (1.0,), ("t1",)),
    StyleRef("scream", ("/s/scream.jpg",), (1.0,), ("t2",)),
]


@pytest.mark.parametrize(
    "rel, expected",
    [
        ("a/b.jpg", "a/b.jpg"),
        ("../../etc/passwd", "_/_/etc/passwd"),
        ("/abs/x.png", "abs/x.png"),
        ("sub dir/my photo.jpg", "sub dir/my photo.jpg"),
        ("a/./b/../c.jpg", "a/b/_/c.jpg"),
        ("c:\\win\\x.jpg", "c_/win/x.jpg"),
        ("", "_"),
    ],
)
def test_sanitize_relpath_stays_below_root(rel, expected):
    assert sanitize_relpath(rel) == expected


def test_output_uri_is_a_pure_function_under_the_root():
    uri = output_uri("s3://b/out", "../evil", "../../x.jpg", "jpeg")
    assert uri == "s3://b/out/.._evil/_/_/x.jpg"  # one component, no escape
    assert output_uri("/o", "starry", "sub dir/p.JPG", "png") == "/o/starry/sub dir/p.png"
    assert output_uri("/o", "s", "p.jpg", "tiff") == "/o/s/p.tif"


def test_item_ids_are_stable_and_follow_inputs():
    contents = [Content("/in/a.jpg", "a.jpg", "10-1"), Content("/in/b.jpg", "b.jpg", "10-1")]
    items = make_items(contents, STYLES, "/o", "png", "p1")
    assert len(items) == 4 and len({i.item_id for i in items}) == 4
    assert [(i.content_uri, i.style) for i in items[:2]] == [
        ("/in/a.jpg", "starry"),
        ("/in/a.jpg", "scream"),
    ]
    assert [i.item_id for i in make_items(contents, STYLES, "/o", "png", "p1")] == [
        i.item_id for i in items
    ]
    edited = [Content("/in/a.jpg", "a.jpg", "11-2"), contents[1]]
    changed = make_items(edited, STYLES, "/o", "png", "p1")
    assert changed[0].item_id != items[0].item_id and changed[2].item_id == items[2].item_id
    assert make_items(contents, STYLES, "/o", "png", "p2")[0].item_id != items[0].item_id
    restyled = [StyleRef("starry", ("/s/starry.jpg",), (1.0,), ("new",)), STYLES[1]]
    assert make_items(contents, restyled, "/o", "png", "p1")[0].item_id != items[0].item_id


def test_a_sweep_points_rows_carry_their_own_params_hash():
    contents = [Content("/in/a.jpg", "a.jpg", "10-1")]
    plan = Plan(points=({"tv_weight": 0.0}, {"tv_weight": 1.0}), point_hashes=("h0", "h1"))
    items = make_items(contents, STYLES[:1], "/o", "png", "unused", plan)
    rows = [make_row(i, "ok", shard=0, attempt=1) for i in items]
    assert [r["params_hash"] for r in rows] == ["h0", "h1"]


def test_colliding_output_names_are_told_apart():
    contents = [Content("/in/a.jpg", "a.jpg", "1"), Content("/in/a.png", "a.png", "2")]
    items = make_items(contents, STYLES[:1], "/o", "png", "p")
    assert items[0].output_uri != items[1].output_uri
    assert all(i.output_uri.startswith("/o/starry/a-") for i in items)


def test_shards_cut_in_order_with_ids():
    contents = [Content(f"/in/{n}.jpg", f"{n}.jpg", "1") for n in range(5)]
    items = make_items(contents, STYLES, "/o", "png", "p")
    shards = make_shards(items, 4, first_id=7)
    assert [s.shard_id for s in shards] == [7, 8, 9]
    assert [len(s.items) for s in shards] == [4, 4, 2]
    assert [i for s in shards for i in s.items] == items


def test_plan_batches_groups_same_size_and_isolates_suspects():
    sizes = {"a": (48, 36), "b": (36, 48), "c": (48, 36), "d": (48, 36), "e": (48, 36)}
    order = ["a", "b", "c", "d", "e", "missing"]
    assert plan_batches(sizes, order, max_batch=16) == [["a", "c", "d", "e"], ["b"]]
    assert plan_batches(sizes, order, max_batch=2) == [["a", "c"], ["d", "e"], ["b"]]
    assert plan_batches(sizes, order, 16, frozenset({"c"})) == [["c"], ["a", "d", "e"], ["b"]]
