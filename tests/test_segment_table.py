"""Measured segment tables: parsing and validation, scoring a cost model against one, importing one as a profile
the planner prices with, and tensorrt as a pricing-only runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest import approx

from dsa.errors import ArtifactError, DsaError
from dsa.formats.profile import load_profile
from dsa.formats.segment_table import parse_table
from dsa.latency import table_scores as ts
from tests.cli_helpers import dsa, ok, user_error

# the first 30 rows of Kim et al.'s MobileNetV2-1.0 TensorRT table (RTX 2080 Ti, batch 128; MIT licence):
# segments (st, end] of the chain features[1:-1] up to conv 11
MBV2_ROWS = """# Kim et al., ICML 2023: mbv2_1.0 tensorrt fp32 batch 128 (rows with end <= 11)
st,end,time_ms,stdev_ms,c_in,c_out,kernel,stride,padding,groups,h_in,w_in,h_out,w_out
0,1,1.16779,0.01411,32,32,3,1,1,32,112,112,112,112
0,2,2.46663,0.55315,32,16,3,1,1,1,112,112,112,112
0,3,6.93406,0.26073,32,96,3,1,1,1,112,112,112,112
0,4,6.51371,0.23045,32,96,5,2,2,1,112,112,56,56
0,5,2.36857,0.41493,32,24,5,2,2,1,112,112,56,56
1,2,0.87704,0.01539,32,16,1,1,0,1,112,112,112,112
1,3,2.05206,0.02574,32,96,1,1,0,1,112,112,112,112
1,4,2.66663,0.02694,32,96,3,2,1,1,112,112,56,56
1,5,1.04418,0.02196,32,24,3,2,1,1,112,112,56,56
2,3,1.92429,0.01766,16,96,1,1,0,1,112,112,112,112
2,4,1.52571,0.39272,16,96,3,2,1,1,112,112,56,56
2,5,0.66815,0.01998,16,24,3,2,1,1,112,112,56,56
3,4,1.92922,0.34943,96,96,3,2,1,96,112,112,56,56
3,5,2.60255,0.35833,96,24,3,2,1,1,112,112,56,56
4,5,0.66733,0.02027,96,24,1,1,0,1,56,56,56,56
5,6,0.92430,0.02374,24,144,1,1,0,1,56,56,56,56
5,7,2.85894,0.03111,24,144,3,1,1,1,56,56,56,56
5,8,0.79015,0.03614,24,24,3,1,1,1,56,56,56,56
5,9,2.90124,0.46308,24,144,3,1,1,1,56,56,56,56
5,10,2.10399,0.56320,24,144,5,2,2,1,56,56,28,28
5,11,0.67447,0.01964,24,32,5,2,2,1,56,56,28,28
6,7,1.31662,0.01937,144,144,3,1,1,144,56,56,56,56
6,8,2.40331,0.02527,144,24,3,1,1,1,56,56,56,56
7,8,0.79846,0.01710,144,24,1,1,0,1,56,56,56,56
8,9,0.92377,0.01598,24,144,1,1,0,1,56,56,56,56
8,10,0.96159,0.02328,24,144,3,2,1,1,56,56,28,28
8,11,0.44920,0.02195,24,32,3,2,1,1,56,56,28,28
9,10,0.93481,0.01444,144,144,3,2,1,144,56,56,28,28
9,11,1.17167,0.03040,144,32,3,2,1,1,56,56,28,28
10,11,0.44655,0.01534,144,32,1,1,0,1,28,28,28,28
"""

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "measured-gpu"


def test_parse_a_table() -> None:
    t = parse_table(MBV2_ROWS, "mbv2.csv")
    assert len(t.rows) == 30 and t.chain_length == 11
    assert t.comments[0].startswith("Kim et al.")
    r = t.by_span()[(0, 4)]
    assert (r.c_in, r.c_out, r.kernel, r.stride, r.groups, r.h_out) == (32, 96, 5, 2, 1, 56)
    assert r.convs == 4 and not r.depthwise and t.by_span()[(0, 1)].depthwise


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda s: s.replace("st,end,time_ms", "st,end,ms"), "lacks column(s) time_ms"),
        (lambda s: s.replace("0,4,6.51371", "0,4,fast"), "column 'time_ms' is 'fast'"),
        (lambda s: s.replace("32,96,5,2,2,1,112,112,56,56", "32,96,5,2,2,1,112,112,55,56"), "h_out=55"),
        (lambda s: s.replace("1,2,0.87704", "0,1,0.87704"), "(0, 1] is also on line"),
        (lambda s: s.replace("4,5,0.66733", "5,4,0.66733"), "st must be < end"),
        (lambda s: s.replace("96,96,3,2,1,96", "96,96,3,2,1,7"), "groups=7"),
        (lambda s: "# only comments\n", "no header"),
    ],
)
def test_bad_tables_are_refused_naming_the_line(edit, fragment) -> None:
    with pytest.raises(ArtifactError, match="table t.csv") as e:
        parse_table(edit(MBV2_ROWS), "t.csv")
    assert fragment in str(e.value)


def _tiny_table():
    # a chain of two convs: (0, 1], (1, 2] and the merged (0, 2]
    return parse_table(
        "st,end,time_ms,stdev_ms,c_in,c_out,kernel,stride,padding,groups,h_in,w_in,h_out,w_out\n"
        "0,1,1.0,0,8,8,3,1,1,1,8,8,8,8\n1,2,2.0,0,8,8,3,1,1,1,8,8,8,8\n0,2,2.5,0,8,8,5,1,2,1,8,8,8,8\n",
        "tiny.csv",
    )


def test_scores_by_hand() -> None:
    t = _tiny_table()
    s = ts.score(t, [1.0, 2.0, 3.5])  # predicts that merging does not pay off (3.5 > 1 + 2); it does (2.5 < 3)
    assert s.merge_triples == 1 and s.merge_right == 0.0 and s.merges_missed == 1 and s.merges_false == 0
    assert s.optimum_ms == approx(2.5) and s.plan_ms == approx(3.0) and s.regret == approx(0.2)
    assert s.median_abs_error == approx(0.0)  # two of three rows exact
    assert s.spearman == approx(1.0)
    right = ts.score(t, [1.0, 2.0, 2.9])
    assert right.merge_right == 1.0 and right.regret == 0.0
    with pytest.raises(DsaError, match="2 predictions"):
        ts.score(t, [1.0, 2.0])
    assert ts.fastest_split(t, [1.0, 2.0, 2.5]) == (approx(2.5), [(0, 2)])


def test_rows_priced_as_their_runtime_runs_them() -> None:
    t = parse_table(MBV2_ROWS, "mbv2.csv")
    trt = ts.price_rows(t, "rtx2080ti", 128, "tensorrt")
    eager = ts.price_rows(t, "rtx2080ti", 128, "eager")
    assert all(a <= b for (a, _), (b, _) in zip(trt, eager, strict=True))  # ReLU fused; every algorithm considered
    algs = dict(zip((r.span for r in t.rows), (alg for _, alg in trt), strict=True))
    assert algs[(0, 1)] == "depthwise_direct" and algs[(1, 2)] == "implicit_gemm"
    floor = ts.table_floor_ms(t)
    assert floor == min(r.time_ms for r in t.rows)
    with_floor = ts.price_rows(t, "rtx2080ti", 128, "tensorrt", call_floor_ms=floor)
    assert [a - b for (a, _), (b, _) in zip(with_floor, trt, strict=True)] == approx([floor] * len(t.rows))
    s = ts.score(t, [p for p, _ in with_floor])
    assert s.merge_triples > 0 and 0.0 <= s.merge_right <= 1.0 and s.regret >= 0.0


@pytest.mark.skipif(not (SHARED / "vgg19_rtx2080ti_eager_b64.csv").exists(), reason="public tables not present")
def test_validation_script_runs_on_the_public_tables(tmp_path) -> None:
    import runpy
    import sys

    out = tmp_path / "v.md"
    argv = sys.argv
    sys.argv = ["validate_measured_gpu.py", "--out", str(out)]
    try:
        runpy.run_path(
            str(Path(__file__).resolve().parents[1] / "bench" / "validate_measured_gpu.py"), run_name="__main__"
        )
    finally:
        sys.argv = argv
    res = json.loads(out.with_suffix(".json").read_text())
    assert len(res["rows"]["mbv2_1.0_rtx2080ti_tensorrt_b128.csv"]) == 171
    assert "merge decisions right" in out.read_text()


def _import(csv, out, *extra, model="mobilenet_v2"):
    """`dsa import-table` of ``csv`` as ``model``'s profile on the RTX 2080 Ti at batch 128."""
    return dsa("import-table", csv, "--model", model, "--gpu", "rtx2080ti", "--batch-size", 128, "--out", out, *extra)


def test_import_a_table_as_a_profile_and_plan_with_it(tmp_path) -> None:
    csv = tmp_path / "mbv2.csv"
    csv.write_text(MBV2_ROWS)
    prof = tmp_path / "p.json"
    res = json.loads(ok(_import(csv, prof, "--runtime", "tensorrt", "--format", "json")))
    assert res["offset"] == 1  # the chain starts after the stem conv
    assert res["ops"] == 11 and res["segments"] + len(res["not_offered"]) == 19 and not res["mismatched"]
    p = load_profile(prof)
    assert p.runtime_name == "tensorrt" and p.batch_size == 128 and p.device_name == "rtx2080ti"
    assert p.ops["features.1.conv.0.0"].median_ms == approx(1.16779)  # row (0, 1]: the first block's depthwise conv
    seg = next(s for s in p.segments.values() if s["table_row"] == [0, 4])
    assert seg["conv"].median_ms == approx(6.51371) and seg["kernel"] == [5, 5] and seg["stride"] == [2, 2]
    assert p.fused["features.1.conv.0.1"] == "features.1.conv.0.0"  # BN and ReLU6 run inside their conv
    plan = tmp_path / "plan.json"
    out = ok(
        dsa(
            "plan",
            "--model",
            "mobilenet_v2",
            "--profile",
            prof,
            "--runtime",
            "tensorrt",
            "--max-accuracy-cost",
            1000,
            "--out",
            plan,
            "--format",
            "json",
        )
    )
    assert json.loads(out)["metadata"]["prediction"]["runtime"] == "tensorrt"
    # a profile of tensorrt never prices another runtime
    user_error(
        dsa("plan", "--model", "mobilenet_v2", "--profile", prof, "--target-speedup", 1.1, "--out", plan),
        "field 'runtime' is tensorrt",
    )


def test_a_table_whose_shapes_disagree_is_refused(tmp_path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(MBV2_ROWS.replace("0,4,6.51371,0.23045,32,96,5,2,2,1", "0,4,6.51371,0.23045,32,97,5,2,2,1"))
    out = tmp_path / "p.json"
    user_error(_import(csv, out, "--runtime", "tensorrt"), "row (0, 4]", "c_out 97 (network: 96)")
    assert not out.exists()
    res = json.loads(ok(_import(csv, out, "--runtime", "tensorrt", "--drop-mismatched", "--format", "json")))
    assert [m["row"] for m in res["mismatched"]] == [[0, 4]]
    user_error(_import(csv, tmp_path / "r.json", model="resnet18"), "no offset")


def test_tensorrt_prices_plans_but_runs_nothing(tmp_path) -> None:
    from dsa.measure.runtimes import check_runtime

    with pytest.raises(DsaError, match="no tensorrt adapter"):
        check_runtime("tensorrt")
    plan = tmp_path / "p.json"
    out = json.loads(
        ok(
            dsa(
                "plan",
                "--model",
                "mobilenet_v2",
                "--gpu",
                "rtx2080ti",
                "--runtime",
                "tensorrt",
                "--ds-pattern",
                "F",
                "--out",
                plan,
                "--format",
                "json",
            )
        )
    )
    assert out["metadata"]["prediction"]["runtime"] == "tensorrt"
    user_error(dsa("bench", "--model", "mobilenet_v2", "--runtime", "tensorrt", "--plan", plan), "no tensorrt adapter")


def test_table_errors_name_the_file_line(tmp_path) -> None:
    from dsa.formats.segment_table import load_table

    text = MBV2_ROWS.replace("1,2,0.87704", "# a note between rows\n1,2,0.87704").replace("2,3,1.92429", "2,3,inf")
    with pytest.raises(ArtifactError, match=r"line 13: time_ms must be > 0"):
        parse_table(text, "t.csv")  # line 1 comment, 2 header, rows from 3: (2, 3] is the tenth, after the note
    binary = tmp_path / "t.csv"
    binary.write_bytes(b"st,end\n\xff\xfe\x00")
    with pytest.raises(ArtifactError, match="not a text file"):
        load_table(binary)
    with pytest.raises(ArtifactError, match="not a readable CSV"):
        parse_table("st,end\n" + "x" * 200_000, "big.csv")
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_table(tmp_path / "missing.csv")


def test_scores_json_has_no_nan() -> None:
    t = _tiny_table()
    s = ts.score(t, [1.0, 2.0, 2.9]).to_json()
    assert s["spearman_single"] is None  # two one-conv rows: no rank correlation
    json.dumps(s, allow_nan=False)


def test_eager_tables_split_the_relu_off(tmp_path) -> None:
    csv = tmp_path / "mbv2.csv"
    csv.write_text(MBV2_ROWS)
    prof = tmp_path / "eager.json"
    ok(_import(csv, prof))
    p = load_profile(prof)
    assert p.runtime_name == "eager" and not p.fused
    assert p.ops["features.1.conv.0.0"].median_ms < 1.16779  # the row's ReLU is priced as the network's own
    seg = next(s for s in p.segments.values() if s["table_row"] == [0, 4])
    assert seg["act"] is not None and seg["conv"].median_ms + seg["act"].median_ms == approx(6.51371)
    # an existing profile is never replaced without --force
    user_error(_import(csv, prof), "exists", "--force")
    ok(_import(csv, prof, "--force"))


def test_tensorrt_is_refused_for_a_cpu(tmp_path) -> None:
    user_error(
        dsa(
            "plan",
            "--model",
            "mobilenet_v2",
            "--gpu",
            "local-cpu",
            "--runtime",
            "tensorrt",
            "--ds-pattern",
            "F",
            "--out",
            tmp_path / "p.json",
        ),
        "runs on NVIDIA GPUs",
    )


def test_opspec_checks_its_stride() -> None:
    import roofline as rl

    op = rl.conv2d_op("c", 1, 8, 8, 8, 8, 8, 8, kernel=3, stride=[1, 1])
    assert op.stride == (1, 1) and hash(op)
    with pytest.raises(rl.RooflineError, match="stride"):
        rl.conv2d_op("c", 1, 8, 8, 8, 8, 8, 8, kernel=3, stride=(0, 1))


MBV2_TABLE = SHARED / "mbv2_1.0_rtx2080ti_tensorrt_b128.csv"


@pytest.mark.skipif(not MBV2_TABLE.exists(), reason="public tables not present")
def test_every_segment_of_the_public_mbv2_table_is_a_candidate() -> None:
    """Kim et al.'s 171 valid MobileNetV2 segments (residual blocks covered whole, anywhere in a segment) are all
    among the planner's candidates, shapes included; version 1's rule (a block only first) offers 120 of them."""
    from dsa.formats.segment_table import load_table
    from dsa.graph import analyze
    from dsa.ir import Kind
    from dsa.models import create_model
    from dsa.planner.candidates import merged_segments

    table = load_table(MBV2_TABLE)
    a = analyze(create_model("mobilenet_v2").eval(), "mobilenet_v2", 224)
    chain = [op.name for op in a.ops.values() if op.kind == Kind.CONV][1:51]
    pos = {c: k for k, c in enumerate(chain)}
    multi = {r.span: r for r in table.rows if r.convs > 1}
    for anywhere, expected in ((True, 121), (False, 70)):
        offered = {}
        for seg in merged_segments(a, units_anywhere=anywhere):
            if all(c in pos for c in seg.convs):
                offered[(pos[seg.convs[0]], pos[seg.convs[-1]] + 1)] = seg
        assert len(set(offered) & set(multi)) == expected
        if anywhere:
            assert set(multi) <= set(offered)
            assert (11, 17) in offered and (20, 41) in offered and (41, 50) in offered
            for span, row in multi.items():
                seg = offered[span]
                claimed = (row.c_in, row.c_out, row.kernel, row.stride, row.groups, row.h_out)
                assert claimed == (
                    seg.in_channels,
                    seg.out_channels,
                    seg.kernel[0],
                    seg.stride[0],
                    seg.groups,
                    seg.out_shape[1],
                ), span
