"""Plans: DepthShrinker keep lists, make_plan, the JSON artifact (round trip, atomic write) and its errors, each
naming the offending field."""

from __future__ import annotations

import itertools
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from dsa import PlanError, act_list_of, analyze, ds_pattern_act_list, load_plan, make_plan, plan_from_act_list
from dsa.errors import OutputError
from dsa.formats.plan import DS_PATTERNS, AddedActivation, Plan, plan_from_json, remove_all_plan
from tests import tiny_models as tm

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mbv2():
    return analyze(tm.tiny_mbv2(), "tiny_mbv2", SIZE)


@pytest.fixture(scope="module")
def plan(mbv2) -> Plan:
    return plan_from_act_list(mbv2, [1, 0, 0, 1, 1])


def _write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


# ------------------------------------------------------------------------------------------ keep lists


def test_act_list_removes_blocks_and_adds_relu6_after_them(mbv2, plan) -> None:
    assert plan.removed == ("features.1.conv.2", "features.1.conv.5", "features.2.conv.2", "features.2.conv.5")
    # after the residual add of block 1, after the last BN of block 2
    assert plan.added == (AddedActivation("features.1.add", "ReLU6"), AddedActivation("features.2.conv.7", "ReLU6"))
    assert plan.source == {"kind": "act-list", "act_list": [1, 0, 0, 1, 1]}
    assert (plan.model, plan.fingerprint, plan.input_size) == ("tiny_mbv2", mbv2.fingerprint, SIZE)
    # recorded segments: merged ones only; both removed blocks are one conv each
    assert [s["convs"] for s in plan.segments] == [
        ["features.1.conv.0", "features.1.conv.3", "features.1.conv.6"],
        ["features.2.conv.0", "features.2.conv.3", "features.2.conv.6"],
    ]
    # the kept block 3 is not merged into the head: a boundary after its output
    assert plan.boundaries == ("features.3.conv.7",)
    assert plan.segments[0]["residual"] is True
    assert plan.segments[1]["stride"] == [2, 2]


def test_act_list_stem_entry_removes_without_adding(mbv2) -> None:
    p = plan_from_act_list(mbv2, [0, 1, 1, 1, 1])
    assert p.removed == ("features.0.2",)
    assert p.added == ()


def test_act_list_added_type(mbv2) -> None:
    p = plan_from_act_list(mbv2, [1, 1, 0, 1, 1], added_type="Hardswish")
    assert p.added == (AddedActivation("features.2.conv.7", "Hardswish"),)


def test_act_list_length_mismatch_names_the_needed_count(mbv2) -> None:
    with pytest.raises(PlanError, match=r"act-list has 4 entries but tiny_mbv2 needs 5 \(stem, 3 blocks, head"):
        plan_from_act_list(mbv2, [1, 0, 0, 1])
    with pytest.raises(PlanError, match=r"features\.0 \.\.\. features\.4"):
        plan_from_act_list(mbv2, [1] * 19)


@pytest.mark.parametrize(("entries", "where"), [([1, 2, 1, 1, 1], "entry 1 is 2"), ([1, 1, 1, -1, 1], "entry 3 is -1")])
def test_act_list_entries_must_be_0_or_1(mbv2, entries, where) -> None:
    with pytest.raises(PlanError, match=rf"act-list {where}; entries must be 0 \(remove\) or 1 \(keep\)"):
        plan_from_act_list(mbv2, entries)


def test_act_list_cannot_remove_the_head_activation(mbv2) -> None:
    message = r"entry 4 \(features\.4\) removes features\.4\.2, which cannot be removed: it feeds"
    with pytest.raises(PlanError, match=message):
        plan_from_act_list(mbv2, [1, 1, 1, 1, 0])


def test_act_list_round_trip(mbv2) -> None:
    for bits in itertools.product([0, 1], repeat=4):
        keep = [*bits, 1]
        assert act_list_of(plan_from_act_list(mbv2, keep), mbv2) == keep


def test_act_list_of_a_partly_removed_block_is_an_error(mbv2) -> None:
    p = make_plan(mbv2, ["features.2.conv.5"])
    with pytest.raises(PlanError, match=r"block features\.2 is only partly removed"):
        act_list_of(p, mbv2)


@pytest.mark.parametrize("letter", list("ABCDEF"))
def test_ds_patterns(letter) -> None:
    keep = ds_pattern_act_list(letter)
    assert len(keep) == 19
    assert keep[-1] == 1  # head always kept
    assert keep[0] == (0 if letter in "ADE" else 1)  # METHOD.md: stem 0 in A, D, E
    kept_blocks = [i for i, v in enumerate(keep[1:-1]) if v]
    assert tuple(kept_blocks) == DS_PATTERNS[letter][0]
    assert ds_pattern_act_list(letter.lower()) == keep


def test_ds_pattern_table_matches_method_md() -> None:
    assert ds_pattern_act_list("A")[1:-1] == [1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1]
    assert ds_pattern_act_list("E") == [0, 1, 0, 0, 1] + [0] * 9 + [1, 1, 1, 1, 1]
    assert ds_pattern_act_list("F") == [1] + [0] * 17 + [1]


def test_unknown_ds_pattern() -> None:
    with pytest.raises(PlanError, match=r"unknown DepthShrinker pattern 'G'; choose one of A, B, C, D, E, F"):
        ds_pattern_act_list("G")


def test_ds_pattern_on_mobilenet_v2_140() -> None:
    # the real network at a small resolution (structure only): 19 blocks, stem + 17 blocks + head
    from dsa import create_model

    a = analyze(create_model("mobilenet_v2_140"), "mobilenet_v2_140", SIZE)
    assert len(a.blocks()) == 19
    p = plan_from_act_list(a, ds_pattern_act_list("F"))
    # features.1 (expansion 1) holds one activation, the 16 others two; the stem is kept in F
    assert len(p.removed) == 1 + 16 * 2
    assert len(p.added) == 17
    assert "features.0.2" not in p.removed
    assert act_list_of(p, a) == ds_pattern_act_list("F")
    d = plan_from_act_list(a, ds_pattern_act_list("D"))
    assert "features.0.2" in d.removed
    assert act_list_of(d, a) == ds_pattern_act_list("D")


# ------------------------------------------------------------------------------------------ make_plan


def test_make_plan_orders_and_dedups_removed(mbv2) -> None:
    p = make_plan(mbv2, ["features.3.conv.5", "features.0.2", "features.3.conv.5", "features.3.conv.2"])
    assert p.removed == ("features.0.2", "features.3.conv.2", "features.3.conv.5")
    assert p.source == {"kind": "manual"}
    assert p.added == () and p.boundaries == ()
    expected = [s.to_json() for s in mbv2.segments(p.removed) if s.merged]
    assert list(p.segments) == expected
    assert all(len(s["convs"]) > 1 for s in p.segments)


def test_make_plan_checks_names(mbv2) -> None:
    with pytest.raises(PlanError, match=r"field 'removed\[0\]': 'features\.4\.2' cannot be removed"):
        make_plan(mbv2, ["features.4.2"])
    with pytest.raises(PlanError, match=r"field 'removed\[1\]': 'nope' is not an activation of tiny_mbv2"):
        make_plan(mbv2, ["features.0.2", "nope"])
    with pytest.raises(PlanError, match=r"field 'added\[0\]\.type': 'Sigmoid' is not one of ReLU6"):
        make_plan(mbv2, [], [AddedActivation("features.1.add", "Sigmoid")])
    with pytest.raises(PlanError, match=r"field 'boundaries\[0\]': 'nope' is not an op of tiny_mbv2"):
        make_plan(mbv2, [], boundaries=["nope"])


def test_remove_all_plan(mbv2) -> None:
    p = remove_all_plan(mbv2)
    assert list(p.removed) == mbv2.removable
    assert p.source == {"kind": "remove-all"}
    assert [len(s["convs"]) for s in p.segments] == [6, 4]


def test_with_metadata_keeps_the_rest(plan) -> None:
    p = plan.with_metadata(note="x")
    assert p.metadata == {"note": "x"}
    assert p.removed == plan.removed and plan.metadata == {}


# ------------------------------------------------------------------------------------------ the artifact


def test_save_load_round_trip(plan, tmp_path) -> None:
    path = tmp_path / "plan.json"
    p = plan.with_metadata(finetuned_epochs=3)
    p.save(path)
    loaded = load_plan(path)
    assert loaded.to_json() == p.to_json()
    assert loaded == p
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 2 and doc["kind"] == "dsa.plan"


def test_save_is_atomic_and_leaves_no_temp_files(plan, tmp_path, monkeypatch) -> None:
    path = tmp_path / "sub" / "plan.json"
    plan.save(path)  # creates the folder
    plan.with_metadata(run=2).save(path)  # overwrites
    assert os.listdir(path.parent) == ["plan.json"]
    assert load_plan(path).metadata == {"run": 2}

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError, match="disk full"):  # one line for the user, not a traceback
        plan.with_metadata(run=3).save(path)
    assert os.listdir(path.parent) == ["plan.json"]  # the temp file is gone
    assert load_plan(path).metadata == {"run": 2}  # the old plan is intact


def test_saved_plan_has_the_permissions_of_a_normal_file(plan, tmp_path) -> None:
    reference = tmp_path / "reference"
    reference.write_text("x")
    path = tmp_path / "plan.json"
    plan.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def _doc(plan: Plan, **changes) -> dict:
    d = plan.to_json()
    for k, v in changes.items():
        if v is _DELETE:
            del d[k]
        else:
            d[k] = v
    return d


_DELETE = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema_version": _DELETE}, r"field 'schema_version' is missing"),
        ({"schema_version": 3}, r"field 'schema_version' is 3; this dsa reads versions 1, 2"),
        ({"model": _DELETE}, r"field 'model' is missing"),
        ({"model": 3}, r"field 'model' must be str, got int"),
        ({"fingerprint": _DELETE}, r"field 'fingerprint' is missing"),
        ({"removed": "features.1.conv.2"}, r"field 'removed' must be list, got str"),
        ({"removed": ["features.1.conv.2", 7]}, r"field 'removed\[1\]' must be a string, got int"),
        ({"removed": _DELETE}, r"field 'removed' is missing"),
        ({"added": {"after": "x"}}, r"field 'added' must be list, got dict"),
        ({"added": [{"after": 1}]}, r"field 'added\[0\]' must be an object with a string 'after'"),
        ({"input_size": "32"}, r"field 'input_size' must be int, got str"),
        ({"input_size": True}, r"field 'input_size' must be int, got bool"),
        ({"boundaries": [None]}, r"field 'boundaries\[0\]' must be a string, got NoneType"),
        ({"segments": [1]}, r"field 'segments' must be a list of objects"),
        ({"metadata": []}, r"field 'metadata' must be an object"),
        ({"kind": "dsa.profile"}, r"field 'kind' is 'dsa.profile', expected 'dsa.plan'"),
    ],
)
def test_load_errors_name_the_field(plan, tmp_path, changes, message) -> None:
    path = _write(tmp_path / "p.json", _doc(plan, **changes))
    with pytest.raises(PlanError, match=message) as exc:
        load_plan(path)
    assert str(path) in str(exc.value)


def test_load_malformed_json_names_the_line(tmp_path) -> None:
    path = _write(tmp_path / "p.json", '{\n  "schema_version": 1,\n  "model": oops\n}\n')
    with pytest.raises(PlanError, match=r"is not valid JSON: Expecting value at line 3 column 12"):
        load_plan(path)


def test_load_not_an_object(tmp_path) -> None:
    path = _write(tmp_path / "p.json", "[1, 2]")
    with pytest.raises(PlanError, match=r"the document must be a JSON object, got list"):
        load_plan(path)


def test_load_missing_file(tmp_path) -> None:
    with pytest.raises(PlanError, match=r"plan .*nope\.json does not exist"):
        load_plan(tmp_path / "nope.json")


def test_load_binary_file(tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PlanError, match=r"is not a text file"):
        load_plan(path)


def test_load_rejects_boolean_schema_version(plan) -> None:
    with pytest.raises(PlanError, match=r"schema_version"):
        plan_from_json(_doc(plan, schema_version=True))


def test_plan_for_another_model_fails_check(plan) -> None:
    se = analyze(tm.tiny_se(), "tiny_se", SIZE)
    with pytest.raises(PlanError, match=r"field 'fingerprint': the plan was made for model 'tiny_mbv2'") as exc:
        plan.check(se)
    assert se.fingerprint in str(exc.value)
    assert "make a new plan" in str(exc.value)


def test_unknown_activation_name_fails_check(mbv2, plan) -> None:
    bad = replace(plan, removed=(*plan.removed, "features.9.conv.2"))
    with pytest.raises(PlanError, match=r"field 'removed\[4\]': 'features\.9\.conv\.2' is not an activation"):
        bad.check(mbv2)


def test_unknown_added_after_fails_check(mbv2, plan) -> None:
    bad = replace(plan, added=(*plan.added, AddedActivation("features.9.add")))
    with pytest.raises(PlanError, match=r"field 'added\[2\]\.after': 'features\.9\.add' is not an op of tiny_mbv2"):
        bad.check(mbv2)


def test_loaded_plan_with_unknown_name_fails_check(mbv2, plan, tmp_path) -> None:
    doc = _doc(plan, removed=["features.1.conv.2", "features.1.conv.9"])
    p = load_plan(_write(tmp_path / "p.json", doc))
    with pytest.raises(PlanError, match=r"field 'removed\[1\]'"):
        p.check(mbv2)
    plan.check(mbv2)  # the original is fine
