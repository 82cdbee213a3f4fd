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
    rows = dict((label, model) for label, model, _ in metric_rows(r))
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
