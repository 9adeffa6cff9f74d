"""`tvmshuffle pick`: kernels' schedules judged by their time inside the network."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, invoke
from tvmshuffle import records

pytestmark = pytest.mark.slow

MODEL = ("shufflenet_v1_g3_0.25x", "--input-size", "64x64")


def test_pick_judges_candidates_in_the_network_and_compile_follows(depthwise_db, tmp_path):
    """Every tuned kernel with two schedules is timed in two builds of the network; picks are
    written only when the network with them ran faster, and compile applies each of them."""
    db = depthwise_db
    record_file = (db / records.RECORD_FILE).read_bytes()

    # --within: 5 random trials may leave no second schedule within the default 1.5x of the
    # fastest (seen once), and this test is of the judging, not of that filter
    result = invoke("pick", *MODEL, "--db", str(db), "--candidates", "2", "--within", "1000",
                    "--runs", "20", "--checks", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    judged = data["kernels"]
    assert judged and all(len(k["alone_ms"]) == len(k["network_ms"]) == 2 for k in judged)
    # alone, the current schedule is the fastest record; in the network it may not be
    assert all(k["alone_ms"][0] <= k["alone_ms"][1] for k in judged)
    assert all(t > 0 for k in judged for t in k["network_ms"])
    changed = [k for k in judged if k["chosen"]]
    for k in changed:
        assert k["network_ms"][1] < k["network_ms"][0]
    assert data["builds"] == (3 if changed else 2)
    assert (db / records.RECORD_FILE).read_bytes() == record_file, "records untouched"
    picks_file = db / records.PICKS_FILE
    if data["written"]:
        assert len(data["checks"]) == 2 and data["max_abs_err"] < 1e-4
        assert all(c["picked_ms"] < c["current_ms"] for c in data["checks"])
        lines = [json.loads(line) for line in picks_file.read_text().splitlines()]
        assert {line["kernel"] for line in lines} == {k["name"] for k in changed}
    else:
        assert not picks_file.exists()

    compiled = invoke("compile", *MODEL, "--db", str(db), "-o", str(tmp_path / "out"),
                      "--json")
    assert compiled.exit_code == 0, compiled.output
    assert json.loads(compiled.stdout)["tuning"]["picked_in_network"] == data["written"]

    # another input size: other kernels, none with records, nothing built or written
    other = invoke("pick", "shufflenet_v1_g3_0.25x", "--input-size", "32x32", "--db", str(db),
                   "--json")
    assert other.exit_code == 0, other.output
    assert json.loads(other.stdout)["kernels"] == [] and json.loads(other.stdout)["builds"] == 0


def test_pick_without_a_database_fails_in_one_line(tmp_path):
    result = invoke("pick", *MODEL, "--db", str(tmp_path / "none"))
    assert_one_line_error(result, "no tuning database in")
