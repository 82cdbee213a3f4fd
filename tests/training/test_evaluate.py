"""evaluate_scores on tiny tables with hand-computed numbers; the `evaluate` verb end to end."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from deepcrossing.errors import InputError
from deepcrossing.training.evaluate import evaluate_scores, find_split_file, metric_rows


def _tiny():
    # user 1: 3 items (2 positive), user 2: 2 items (1 positive), user 3: 1 negative item (one class)
    table = pa.table({
        "userId": pa.array([1, 1, 1, 2, 2, 3], pa.int64()),
        "movieId": pa.array([10, 11, 12, 10, 13, 11], pa.int64()),
        "label": pa.array([1, 0, 1, 0, 1, 0], pa.int8()),
        "movieRatingCount": pa.array([50, 80, 10, 50, 20, 80], pa.int64()),
    })
    scores = np.array([0.9, 0.6, 0.3, 0.8, 0.7, 0.2])
    return table, scores


def test_evaluate_scores_hand_computed():
    table, scores = _tiny()
    r = evaluate_scores(table, scores, k=1)
    assert (r["n_samples"], r["n_users"], r["k"]) == (6, 3, 1)
    assert r["positive_rate"] == pytest.approx(0.5)
    m = r["model"]
    # global AUC: positives {0.9, 0.3, 0.7} vs negatives {0.6, 0.8, 0.2}: wins 3 + 1 + 2 = 6 of 9
    assert m["auc"] == pytest.approx(6 / 9)
    ll = -(math.log(0.9) + math.log(0.4) + math.log(0.3) + math.log(0.2) + math.log(0.7) + math.log(0.8)) / 6
    assert m["logloss"] == pytest.approx(ll)
    assert m["accuracy"] == pytest.approx(3 / 6)           # 0.9 right, 0.6 wrong, 0.3 wrong, 0.8 wrong, 0.7, 0.2 right
    # AP: ranked 0.9(+) 0.8(-) 0.7(+) 0.6(-) 0.3(+) 0.2(-): (1 + 2/3 + 3/5) / 3
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # GAUC: user 1 AUC = 0.5 (0.9 > 0.6, 0.3 < 0.6), weight 3; user 2 AUC = 0, weight 2; user 3 skipped
    assert m["gauc"] == pytest.approx((3 * 0.5 + 2 * 0.0) / 5)
    assert (m["gauc_users_used"], m["gauc_users_skipped"]) == (2, 1)
    # @1: user 1's top item is positive (NDCG 1, recall 1/2, hit 1); user 2's top is negative (0, 0, 0)
    assert m["ndcg"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.25)
    assert m["hit_rate"] == pytest.approx(0.5)
    assert (m["ranking_users_used"], m["ranking_users_skipped"]) == (2, 1)

    p = r["popularity"]
    # counts: positives {50, 10, 20} vs negatives {80, 50, 80}: only the 50-50 tie scores, 1/2 of 9
    assert p["auc"] == pytest.approx(0.5 / 9)
    assert p["logloss"] is None and p["accuracy"] is None
    # user 1: pos 50, 10 vs neg 80 -> 0; user 2: pos 20 vs neg 50 -> 0
    assert p["gauc"] == 0.0
    assert (p["ndcg"], p["recall"], p["hit_rate"]) == (0.0, 0.0, 0.0)
    assert "movieRatingCount" in r["popularity_definition"]


def test_evaluate_scores_k_covers_short_lists():
    table, scores = _tiny()
    m = evaluate_scores(table, scores, k=10)["model"]
    # every user's whole list fits in 10: recall and hit are 1 for the two users with a positive
    assert (m["recall"], m["hit_rate"]) == (1.0, 1.0)
    # user 1 ranked (+, -, +): DCG = 1 + 1/2, IDCG = 1 + 1/log2(3); user 2 ranked (-, +): 1/log2(3) / 1
    u1 = 1.5 / (1 + 1 / math.log2(3))
    u2 = 1 / math.log2(3)
    assert m["ndcg"] == pytest.approx((u1 + u2) / 2)


def test_report_is_json_ready_with_undefined_values_as_none():
    import json

    table = pa.table({"userId": [1, 2], "label": [1, 1], "movieRatingCount": [3, 4]})
    r = evaluate_scores(table, np.array([0.5, 0.6]))
    assert r["model"]["auc"] is None and r["model"]["gauc"] is None   # one class: undefined
    assert r["model"]["ndcg"] == 1.0
    json.loads(json.dumps(r, allow_nan=False))
    rows = {label: model for label, model, _ in metric_rows(r)}
    assert rows["AUC"] == "-" and rows["NDCG@10"] == "1.0000"


def test_bad_input_names_the_field():
    table, scores = _tiny()
    with pytest.raises(InputError, match="userId"):
        evaluate_scores(table.drop_columns(["userId"]), scores, source="x.parquet")
    with pytest.raises(InputError, match="5 scores for 6 samples"):
        evaluate_scores(table, scores[:5])
    with pytest.raises(InputError, match="NaN"):
        evaluate_scores(table, np.array([0.1, np.nan, 0.2, 0.3, 0.4, 0.5]))
    r = evaluate_scores(table.drop_columns(["movieRatingCount"]), scores)
    assert r["popularity"] is None and "no movieRatingCount" in r["popularity_definition"]


def test_find_split_file(tmp_path):
    (tmp_path / "test.csv").write_text("x\n")
    assert find_split_file(tmp_path, "test") == tmp_path / "test.csv"
    (tmp_path / "test.parquet").write_bytes(b"")
    assert find_split_file(tmp_path, "test") == tmp_path / "test.parquet"
    with pytest.raises(InputError, match="valid.parquet"):
        find_split_file(tmp_path, "valid")
    with pytest.raises(InputError, match="unknown split"):
        find_split_file(tmp_path, "dev")


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def small_samples(ml_small_dir, tmp_path_factory):
    """prepare's time split of ml-latest-small, train and valid cut to their first rows (keeps CI fast);
    test kept whole, so the popularity numbers are those of the real test period."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from deepcrossing.cli import app

    root = tmp_path_factory.mktemp("eval")
    full = root / "full"
    res = CliRunner().invoke(app, ["prepare", "--data", str(ml_small_dir), "--out", str(full)])
    assert res.exit_code == 0, res.output
    small = root / "small"
    small.mkdir()
    pq.write_table(pq.read_table(full / "train.parquet").slice(0, 6000), small / "train.parquet")
    pq.write_table(pq.read_table(full / "valid.parquet").slice(0, 2000), small / "valid.parquet")
    pq.write_table(pq.read_table(full / "test.parquet"), small / "test.parquet")
    model = root / "model"
    res = CliRunner().invoke(app, ["train", "--samples", str(small), "--out", str(model), "--epochs", "1",
                                   "--device", "cpu", "--seed", "0"])
    assert res.exit_code == 0, res.output
    return small, model


@pytest.mark.slow
def test_evaluate_verb_end_to_end(small_samples, tmp_path):
    import json

    from typer.testing import CliRunner

    import deepcrossing
    from deepcrossing import metrics as M
    from deepcrossing.cli import app
    from deepcrossing.features import read_samples

    samples, model = small_samples
    res = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--samples", str(samples)])
    assert res.exit_code == 0, res.output
    assert "popularity" in res.output and "NDCG@10" in res.output
    written = model / "metrics-test.json"
    report = json.loads(written.read_text())
    assert not list(model.glob(".metrics-test.json.tmp-*"))           # atomic: no leftovers
    assert (report["n_samples"], report["n_users"], report["split"]) == (10084, 74, "test")
    assert report["positive_rate"] == pytest.approx(0.5567235224117414, abs=1e-12)
    # the popularity baseline on the real test period: a fixed number of the data, not of the model
    pop = report["popularity"]
    assert pop["auc"] == pytest.approx(0.6138447624945307, abs=1e-9)
    assert (pop["gauc_users_used"], pop["gauc_users_skipped"]) == (68, 6)
    assert (pop["ranking_users_used"], pop["ranking_users_skipped"]) == (72, 2)
    # the model's numbers are those of its own predictions
    table = read_samples(samples / "test.parquet")
    probs = deepcrossing.load(model).predict(table)
    y, users = table.column("label").to_numpy(), table.column("userId").to_numpy()
    assert report["model"]["auc"] == pytest.approx(M.auc(y, probs), abs=1e-9)
    assert report["model"]["logloss"] == pytest.approx(M.logloss(y, probs), abs=1e-9)
    assert report["model"]["ndcg"] == pytest.approx(M.ndcg_at_k(users, y, probs).value, abs=1e-9)
    assert report["model"]["auc"] > 0.6                               # learned something in one epoch

    # --file and --out: another split, written where asked
    out = tmp_path / "valid-metrics.json"
    res = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--file", str(samples / "valid.parquet"),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["n_samples"] == 2000


def test_evaluate_verb_bad_input(small_samples, tmp_path):
    from typer.testing import CliRunner

    from deepcrossing.cli import app

    samples, model = small_samples
    res = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--samples", str(tmp_path)])
    assert res.exit_code != 0
    assert "test.parquet" in str(res.exception) or "test.parquet" in res.output


def test_evaluate_names_the_sample_file_that_lacks_a_column(small_samples, tmp_path):
    """`evaluate --model M --samples SP` (a --format sparrow folder, without the userGenreCounts column M's
    spec reads) said `error: field userGenreCounts: the sample file has no column ...` without naming the
    file; now the error starts with the file's path."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from deepcrossing.cli import app

    samples, model = small_samples
    table = pq.read_table(samples / "test.parquet")
    bad = tmp_path / "other.parquet"
    pq.write_table(table.drop_columns(["userGenreCounts"]), bad)
    res = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--file", str(bad),
                                   "--out", str(tmp_path / "m.json")])
    message = str(res.exception)  # the app without the entry point: main() prints it as one `error:` line
    assert message.startswith(f"{bad}: field userGenreCounts: the sample file has no column"), message
    assert not (tmp_path / "m.json").exists()


def test_evaluate_of_an_empty_split_is_one_input_error(small_samples, tmp_path):
    """`evaluate --model M --samples S` where S's test split has no rows (`prepare --fractions 0.5,0.5,0`)
    crashed with `TypeError: unsupported format string passed to NoneType.__format__`."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from deepcrossing.cli import app

    samples, model = small_samples
    empty = tmp_path / "test.parquet"
    pq.write_table(pq.read_table(samples / "test.parquet").slice(0, 0), empty)
    res = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--file", str(empty),
                                   "--out", str(tmp_path / "m.json")])
    assert str(res.exception).startswith(f"{empty}: the file has no sample rows: nothing to evaluate"), res.exception
    assert not (tmp_path / "m.json").exists()
