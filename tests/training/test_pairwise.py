"""The within-user pairwise term (``train.pairwise``): the pair loss by hand and against a plain-Python
reference, the grouped order, the Trainer with lambda = 0 (untouched) and > 0, and the CLI end to end."""

from __future__ import annotations

import json
import math

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from dc_synthetic import optimizer_step, sample_table, small_spec, train_cli_args, write_splits
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import deepcrossing
from deepcrossing.cli import app, main
from deepcrossing.config import ExperimentConfig, Feature, FeatureSpec, ModelConfig, TrainConfig, load_config
from deepcrossing.encoding import Batch, Encoder
from deepcrossing.errors import InputError
from deepcrossing.model import DeepCrossing, DeepCrossingTrain
from deepcrossing.training import distributed, pairwise
from deepcrossing.training.distributed import DistContext, epoch_seed, shard_rows
from deepcrossing.training.optim import lr_at, make_optimizers, set_lr
from deepcrossing.training.pairwise import grouped_order, pair_loss, train_users
from deepcrossing.training.trainer import Trainer


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def reference_pairs(logits, labels, users):
    """Every (positive, negative) pair of one user, users by id, positives then negatives in row order."""
    out = []
    for u in sorted(set(users)):
        rows = [i for i, v in enumerate(users) if v == u]
        pos, neg = [i for i in rows if labels[i] == 1], [i for i in rows if labels[i] == 0]
        out += [(p, n) for p in pos for n in neg]
    return out


# ---------------------------------------------------------------- pair loss


def test_pair_loss_by_hand_on_two_users():
    # user 4: positives 2.0, 1.0 and negative 0.0; user 9: positive 0.5, negatives 1.5, -1.0 (rows interleaved)
    logits = torch.tensor([2.0, 0.5, 0.0, 1.5, 1.0, -1.0], requires_grad=True)
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    users = torch.tensor([4, 9, 4, 9, 4, 9])
    want = (softplus(-2.0) + softplus(-1.0) + softplus(1.0) + softplus(-1.5)) / 4
    got = pair_loss(logits, labels, users)
    assert float(got.detach()) == pytest.approx(want, abs=1e-6)
    got.backward()
    assert logits.grad is not None and float(logits.grad[0]) < 0 < float(logits.grad[2])  # push pos up, neg down


def test_no_cross_user_pairs_and_no_pair_for_one_class_users():
    # user 1 has only a positive, user 2 only negatives, user 3 only positives: no pair at all
    logits = torch.tensor([-5.0, 5.0, 4.0, -3.0], requires_grad=True)
    zero = pair_loss(logits, torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([1, 2, 2, 3]))
    assert float(zero) == 0.0 and not zero.requires_grad
    # the same rows as one user: 2 x 2 pairs
    one = pair_loss(logits, torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([1, 1, 1, 1]))
    assert float(one.detach()) == pytest.approx((softplus(10) + softplus(9) + softplus(8) + softplus(7)) / 4, rel=1e-6)
    assert float(pair_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_pair_loss_equals_the_plain_python_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n = 60
    users = torch.randint(0, 7, (n,), generator=g) * 13 - 20  # unsorted, negative ids too
    labels = (torch.rand(n, generator=g) < 0.4).float()
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    pairs = reference_pairs(logits.tolist(), labels.tolist(), users.tolist())
    want = sum(softplus(logits[n_].item() - logits[p].item()) for p, n_ in pairs) / len(pairs)
    assert float(pair_loss(logits, labels, users)) == pytest.approx(want, rel=1e-12)
    # capped: an evenly strided subset of the same enumeration
    cap = 17
    stride = -(-len(pairs) // cap)
    sub = pairs[::stride]
    want_sub = sum(softplus(logits[n_].item() - logits[p].item()) for p, n_ in sub) / len(sub)
    assert float(pair_loss(logits, labels, users, max_pairs=cap)) == pytest.approx(want_sub, rel=1e-12)


def test_grouped_order_keeps_each_users_rows_together_and_shuffles():
    users = torch.tensor([3, 1, 3, 2, 1, 3, 2, 2, 9, 1] * 20)
    orders = [grouped_order(users, torch.Generator().manual_seed(s)) for s in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(len(users)))  # a permutation
        seq = users[order].tolist()
        runs = [u for i, u in enumerate(seq) if i == 0 or u != seq[i - 1]]
        assert sorted(runs) == [1, 2, 3, 9]  # each user one run of adjacent rows
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    again = grouped_order(users, torch.Generator().manual_seed(0))
    assert torch.equal(again, orders[0])


# ---------------------------------------------------------------- the Trainer


MODEL = ModelConfig(width=16, hidden=(8,), dropout=0.2, embedding_dropout=0.1)


@pytest.fixture(scope="module")
def data():
    train, valid = sample_table(600, seed=0), sample_table(300, seed=1)
    enc = Encoder(small_spec()).fit(train)
    users = train_users({"train": train}, TrainConfig(pairwise=1.0))
    return enc, enc.transform(train), enc.transform(valid), users


class Recording(DeepCrossingTrain):
    """DeepCrossingTrain that records the movie ids of every random (pointwise) batch it is given."""

    def __init__(self, model: DeepCrossing) -> None:
        super().__init__(model)
        self.seen: list[torch.Tensor] = []

    def forward(self, batch):
        self.seen.append(batch.sparse["movieId"].clone())
        return super().forward(batch)


def fit(data, config, users="data"):
    enc, train, valid, u = data
    torch.manual_seed(config.seed)
    module = Recording(DeepCrossing(small_spec(), MODEL, enc.cardinalities))
    result = Trainer(module, config).fit(train, valid, users=u if users == "data" else users)
    return module, result


def strip_times(history):
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "samples_per_s")} for r in history]


def test_lambda_zero_is_todays_training_and_never_groups(data, monkeypatch):
    config = TrainConfig(epochs=2, batch_size=64, lr=1e-2, patience=0, seed=2)
    # off by default and left out of the config's dict, so manifests and checkpoint fingerprints stay as before
    assert TrainConfig().pairwise is None and "pairwise" not in config.to_dict()
    plain_module, plain = fit(data, config, users=None)
    config = TrainConfig(epochs=2, batch_size=64, lr=1e-2, patience=0, seed=2, pairwise=0.0)   # 0 is off too

    def never(*args, **kwargs):
        raise AssertionError("lambda = 0 must not group rows or add a term")

    monkeypatch.setattr(pairwise, "grouped_order", never)
    monkeypatch.setattr(pairwise, "PairwiseTrain", never)
    given_module, given = fit(data, config)  # users given but lambda = 0: ignored
    assert strip_times(given.history) == strip_times(plain.history)
    assert "train_pairwise" not in plain.history[0]
    for (k, a), (_, b) in zip(plain_module.model.state_dict().items(), given_module.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_lambda_positive_adds_the_term_on_the_same_random_batches(data):
    base = {"epochs": 3, "batch_size": 64, "lr": 1e-2, "patience": 0, "seed": 2}
    zero_module, zero = fit(data, TrainConfig(**base))
    pair_module, pair = fit(data, TrainConfig(**base, pairwise=1.0))
    # the random batches are drawn exactly as with lambda = 0 (the grouped order has its own generator)
    assert len(pair_module.seen) == len(zero_module.seen) == 3 * math.ceil(600 / 64)
    assert all(torch.equal(a, b) for a, b in zip(pair_module.seen, zero_module.seen))
    records = pair.history
    assert all(0.0 < r["train_pairwise"] < 1.0 and "train_loss" in r for r in records)
    assert records[-1]["train_pairwise"] < records[0]["train_pairwise"]  # the term is trained down
    assert pair.best_auc > 0.75 and records != zero.history
    changed = [not torch.equal(a, b) for a, b in zip(zero_module.model.parameters(), pair_module.model.parameters())]
    assert any(changed)
    _, again = fit(data, TrainConfig(**base, pairwise=1.0))  # deterministic
    assert strip_times(again.history) == strip_times(pair.history)


def test_resume_after_a_kill_equals_the_uninterrupted_pairwise_run(data, tmp_path):
    enc, train, valid, users = data
    config = TrainConfig(epochs=3, batch_size=64, lr=5e-3, patience=0, seed=1, pairwise=0.5)

    def run(folder, resume=False, on_epoch=None):
        torch.manual_seed(config.seed)
        model = DeepCrossing(small_spec(), MODEL, enc.cardinalities)
        result = Trainer(DeepCrossingTrain(model), config, "cpu", folder).fit(train, valid, resume=resume,
                                                                            on_epoch=on_epoch, users=users)
        return model, result

    full_model, full = run(tmp_path / "full")

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "ckpt", on_epoch=kill_after_two)
    torch.manual_seed(999)
    resumed_model, resumed = run(tmp_path / "ckpt", resume=True)
    assert strip_times(resumed.history) == strip_times(full.history)
    for (k, a), (_, b) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), k


def test_bf16_autocast_with_the_pairwise_term_learns(data):
    enc, train, valid, users = data
    torch.manual_seed(2)
    model = DeepCrossing(small_spec(), MODEL, enc.cardinalities)
    config = TrainConfig(epochs=3, batch_size=64, lr=1e-2, patience=0, seed=2, pairwise=0.5)
    result = Trainer(DeepCrossingTrain(model), config, autocast=torch.bfloat16).fit(train, valid, users=users)
    assert result.best_auc > 0.75 and all(math.isfinite(r["train_pairwise"]) for r in result.history)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_grouped_batches_cover_every_row_once_with_users_adjacent(data):
    enc, train, valid, users = data
    trainer = Trainer(DeepCrossingTrain(DeepCrossing(small_spec(), MODEL, enc.cardinalities)),
                      TrainConfig(batch_size=64, pairwise=0.5))
    rows = len(train) - 3  # as under DDP: the first rows of the order only
    batches = list(trainer._grouped(train, users, 0, rows, 64))
    assert [len(b) for b, _ in batches] == [64] * (rows // 64) + [rows % 64]
    labels = torch.cat([b.labels for b, _ in batches])
    assert len(labels) == rows and float(labels.sum()) <= float(train.labels.sum())
    for batch, u in batches:
        seq = u.tolist()
        runs = [x for i, x in enumerate(seq) if i == 0 or x != seq[i - 1]]
        assert len(runs) == len(set(runs))  # each user's rows adjacent within the batch
        # the users are the batch rows' own: one encoded userId (a feature of small_spec) per user and back
        pairs = set(zip(seq, batch.sparse["userId"].tolist()))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    epoch1 = list(trainer._grouped(train, users, 1, rows, 64))
    assert not torch.equal(batches[0][1], epoch1[0][1])  # a fresh order per epoch


def test_lambda_positive_without_users_is_refused(data):
    with pytest.raises(InputError, match="train.pairwise > 0") as info:
        fit(data, TrainConfig(epochs=1, pairwise=0.3), users=None)
    assert info.value.field == "train.pairwise"


def test_train_users_codes_refusals_and_shards():
    table = pa.table({"userId": pa.array(["b", "a", "b", "c"]), "label": pa.array([1, 0, 0, 1], pa.int8())})
    assert train_users({"train": table}, TrainConfig()) is None  # lambda = 0: nothing read
    codes = train_users({"train": table}, TrainConfig(pairwise=1.0))
    assert codes is not None and codes.tolist() == [0, 1, 0, 2]
    with pytest.raises(InputError, match="no 'userId' column") as info:
        train_users({"train": table.drop_columns(["userId"])}, TrainConfig(pairwise=1.0), "s/train.parquet")
    assert info.value.field == "userId" and "s/train.parquet" in str(info.value)
    with pytest.raises(InputError, match="--stream"):
        train_users({"train": None}, TrainConfig(pairwise=1.0), streaming=True)
    with pytest.raises(InputError, match="null"):
        train_users({"train": pa.table({"userId": pa.array([1, None])})}, TrainConfig(pairwise=1.0))


@pytest.mark.parametrize(("value", "why"), [(-0.5, ">= 0"), ("nan", "finite"), ("inf", "finite"), ('"x"', "number")])
def test_bad_lambda_in_a_spec_file_names_the_field_and_the_file(tmp_path, value, why):
    path = tmp_path / "spec.toml"
    path.write_text(f'[[features]]\nname = "movieId"\nkind = "categorical"\n\n[train]\npairwise = {value}\n')
    with pytest.raises(InputError, match=why) as info:
        load_config(path)
    assert info.value.field == "train.pairwise" and str(path) in str(info.value)


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = write_splits(tmp_path_factory.mktemp("pw-samples"))
    config = ExperimentConfig(spec=small_spec(), model=MODEL,
                              train=TrainConfig(epochs=2, batch_size=64, patience=0, pairwise=0.5))
    (root / "spec.json").write_text(json.dumps(config.to_dict()))
    return root


def train_args(files, out, *extra):
    return train_cli_args(files, out, 3, *extra)


def test_cli_train_with_pairwise_writes_a_loadable_model(files, tmp_path):
    out = tmp_path / "model"
    result = CliRunner().invoke(app, train_args(files, out))
    assert result.exit_code == 0, result.output
    loaded = deepcrossing.load(out)
    assert loaded.manifest["train_config"]["pairwise"] == 0.5
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(r["train_pairwise"] > 0 for r in lines)
    test = pq.read_table(files / "test.parquet")
    probs = loaded.predict(test)
    from deepcrossing.metrics import auc

    assert auc(test.column("label").to_numpy(), probs) == pytest.approx(loaded.manifest["metrics"]["test"]["auc"],
                                                                      abs=1e-9)


def test_cli_ensemble_passes_pairwise_through(files, tmp_path):
    out = tmp_path / "ens"
    result = CliRunner().invoke(app, train_args(files, out, "--ensemble", "2", "--epochs", "1"))
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["member"] for r in lines] == [0, 1] and all(r["train_pairwise"] > 0 for r in lines)
    assert deepcrossing.load(out).manifest["train_config"]["pairwise"] == 0.5


def test_cli_stream_with_pairwise_is_a_one_line_error(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(train_args(files, tmp_path / "m", "--stream"))
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.strip().startswith("error:") and "Traceback" not in err, err
    assert "--stream" in err and "train.pairwise" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m" / "model.safetensors").exists()


# ---------------------------------------------------------------- data parallel (gloo ranks)


N, BATCH, WORLD = 512, 64, 2  # 256 rows per rank, local batches of 32: 8 steps


def _ddp_data() -> tuple[Batch, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(N, 2, generator=g)
    ids = torch.randint(1, 30, (N,), generator=g)
    users = torch.randint(0, 12, (N,), generator=g)
    labels = ((dense[:, 0] + (ids % 3 == 0).float() + 0.3 * torch.randn(N, generator=g)) > 0.5).float()
    return Batch(dense, {"movieId": ids}, {}, {}, labels), users


def _ddp_model() -> DeepCrossing:
    torch.manual_seed(0)
    spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),
                        Feature("x", "numeric", transform="standardize"),
                        Feature("y", "numeric", transform="standardize")))
    return DeepCrossing(spec, ModelConfig(hidden=(8,), width=8, dropout=0.0, embedding_dropout=0.0,
                                          embedding_l2=1e-3), {"movieId": 32})


DDP_CONFIG = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-2, patience=0, seed=5, weight_decay=0.0, pairwise=1.0)


def _ddp_worker(ctx: DistContext, out: str) -> None:
    """One rank: its shard and its shard's users under DDP; rank 0 saves the weights."""
    distributed.init(ctx)
    torch.set_num_threads(1)
    data, users = _ddp_data()
    model = _ddp_model()
    shard = shard_rows(N, ctx)
    result = Trainer(DeepCrossingTrain(model), DDP_CONFIG, dist=ctx).fit(data.take(shard), data, users=users[shard])
    if ctx.is_main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
        Path(out + ".json").write_text(json.dumps(result.history))


def _ddp_reference() -> dict[str, torch.Tensor]:
    """One process: the ranks' concatenated random batches (BCE) plus the mean of each rank's own grouped
    batch's pair term (each rank averages over its own pairs; DDP averages the ranks' gradients)."""
    data, users = _ddp_data()
    c, model = DDP_CONFIG, _ddp_model()
    module = DeepCrossingTrain(model)
    opts = make_optimizers(module.parameter_groups(), c)
    local, rows = BATCH // WORLD, N // WORLD
    randoms, groupeds = [], []
    for rank in range(WORLD):
        shard = shard_rows(N, DistContext(rank, WORLD, rank, "gloo"))
        part, part_users = data.take(shard), users[shard]
        perm = torch.randperm(len(part), generator=torch.Generator().manual_seed(epoch_seed(c.seed, rank, 0)))
        randoms.append(part.take(perm[:rows]))
        order = grouped_order(part_users, torch.Generator().manual_seed(epoch_seed(c.seed + 2, rank, 0)))[:rows]
        groupeds.append((part.take(order), part_users[order]))
    for step in range(rows // local):
        at = slice(step * local, (step + 1) * local)
        parts = [r.slice(at.start, at.stop) for r in randoms]
        set_lr(opts, lr_at(c, 0, step, rows // local))
        objective, _ = module(Batch.cat(parts))
        pair = torch.stack([pair_loss(model(g.slice(at.start, at.stop)), g.labels[at], u[at]) for g, u in groupeds])
        optimizer_step(opts, objective + c.pairwise * pair.mean())
    return model.state_dict()


def test_two_gloo_ranks_each_grouping_its_shard_match_one_process(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is unavailable")
    out = str(tmp_path / "rank0")
    distributed.launch(WORLD, _ddp_worker, out)
    got, want, initial = load_file(out), _ddp_reference(), _ddp_model().state_dict()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5, msg=name)
    assert max(float((want[k] - initial[k]).abs().max()) for k in want) > 1e-2  # the weights did train
    history = json.loads(Path(out + ".json").read_text())
    assert history[0]["train_pairwise"] > 0
