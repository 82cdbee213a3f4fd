"""Every careless or hostile flag value of the issue gets one line `error: ...` and exit status 2, never a
traceback: one table of (argv, exit code, message fragment), run through the real entry point in-process.

Paths in argv are written with placeholders filled from a per-module workdir:
``{model}`` a folder that passes the model-folder check, ``{samples}`` a samples folder (its manifest says so),
``{file}`` an existing plain file, ``{log}`` a tiny MovieLens-format log, ``{ms}`` the same log with
millisecond timestamps, ``{far}`` a log with a timestamp of 1e17, ``{half}`` one with a fractional timestamp,
``{long}`` a file whose header line is over the line limit, ``{dir}`` a MovieLens CSV release, ``{out}`` an
output folder that must never be created.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepcrossing.cli import main

LOG = ("userId,movieId,rating,timestamp\n"
       + "".join(f"{u},{i},{1 + (u * i) % 5}.0,{964982703 + 97 * u + i}\n" for u in range(1, 9) for i in range(1, 7)))

CASES = [
    # recommend: -k -5 listed 643 movies; ids beyond int64 crashed
    (["recommend", "-k", "-5", "--model", "{model}", "--user", "1"], 2, "Invalid value for '-k'"),
    (["recommend", "-k", "0", "--model", "{model}", "--user", "1"], 2, "Invalid value for '-k'"),
    (["recommend", "--user", str(2**63), "--model", "{model}"], 2, "Invalid value for '--user'"),
    (["recommend", "--candidates", "0", "--model", "{model}", "--user", "1"], 2, "'--candidates'"),
    (["recommend", "--model", "/nonexistent", "--user", "1"], 2, "no such folder"),
    # serve: --port 99999 bound a random port and printed 99999
    (["serve", "--port", "99999", "--model", "{model}"], 2, "Invalid value for '--port'"),
    (["serve", "--port", "0", "--model", "{model}"], 2, "Invalid value for '--port'"),
    (["serve", "--port", "-1", "--model", "{model}"], 2, "Invalid value for '--port'"),
    (["serve", "--log-level", "loud", "--model", "{model}"], 2, "must be one of critical, error, warning"),
    # serve --host '' listened on every interface (0.0.0.0 and ::); a name that does not resolve was uvicorn's
    # `ERROR: [Errno -2] Name or service not known`, exit 3, after the banner
    (["serve", "--host", "", "--model", "{model}"], 2, "Invalid value for '--host': must be an address or host"),
    (["serve", "--host", "not a host", "--model", "{model}"], 2, "Invalid value for '--host': cannot resolve"),
    (["serve", "--threads", "0", "--model", "{model}"], 2, "'--threads'"),
    # --threads 1000000 hung train (no output after 60 s: a million OpenMP threads); --workers had no bound either
    (["train", "--threads", "1000000", "--samples", "{samples}"], 2, "Invalid value for '--threads'"),
    (["train-recall", "--threads", "1000000", "--samples", "{samples}", "--out", "{out}"], 2, "'--threads'"),
    (["serve", "--threads", "1000000", "--model", "{model}"], 2, "Invalid value for '--threads'"),
    (["serve", "--workers", "100000", "--model", "{model}"], 2, "Invalid value for '--workers'"),
    (["serve", "--model", "/nonexistent"], 2, "/nonexistent: no such folder"),
    (["serve", "--model", "{file}"], 2, "is a file, not a folder"),
    (["serve", "--webroot", "/nonexistent", "--model", "{model}"], 2, "'--webroot': /nonexistent: no such folder"),
    (["serve", "--webroot", "{file}", "--model", "{model}"], 2, "is a file; give a folder"),
    # publish: a samples folder was published as a model; --candidates 0 published nothing, -1 crashed
    (["publish", "--model", "{samples}", "--data", "{log}"], 2, "a samples folder"),
    (["publish", "--candidates", "0", "--model", "{model}", "--data", "{log}"], 2, "'--candidates'"),
    (["publish", "--candidates", "-1", "--model", "{model}", "--data", "{log}"], 2, "'--candidates'"),
    (["publish", "--keep-previous", "-1", "--model", "{model}", "--data", "{log}"], 2, "'--keep-previous'"),
    # train
    (["train", "--threads", "-1", "--samples", "{samples}"], 2, "'--threads'"),
    (["train", "--out", "{file}", "--samples", "{samples}"], 2, "is a file; give a folder"),
    (["train", "--epochs", "0", "--samples", "{samples}"], 2, "'--epochs': must be >= 1"),
    (["train", "--batch-size", "0", "--samples", "{samples}"], 2, "'--batch-size': must be >= 1"),
    (["train", "--lr", "-1", "--samples", "{samples}"], 2, "'--lr': must be > 0.0, not -1.0"),
    (["train", "--lr", "nan", "--samples", "{samples}"], 2, "'--lr'"),
    (["train", "--mlp", "deep", "--samples", "{samples}"], 2, "'--mlp': must be one of residual, plain"),
    (["train", "--device", "tpu", "--samples", "{samples}"], 2, "'--device': must be one of cpu, cuda, auto"),
    (["train", "--nproc", "0", "--samples", "{samples}"], 2, "'--nproc'"),
    (["train", "--memory-budget", "lots", "--samples", "{samples}"], 2, "'--memory-budget': must be a size like 4G"),
    (["evaluate", "--split", "holdout", "--model", "{model}"], 2, "'--split': must be one of train, valid, test"),
    (["evaluate", "--k", "0", "--model", "{model}"], 2, "'--k'"),
    (["evaluate", "--retrieval", "--k", "50,x", "--model", "{model}"], 2, "'--k': must be positive integers"),
    (["evaluate", "--retrieval", "--k", "0,50", "--model", "{model}"], 2, "'--k': must be positive integers"),
    (["evaluate", "--retrieval", "--model", "{model}"], 2, "--retrieval needs --samples DIR"),
    (["evaluate", "--k", "10,20", "--model", "{model}", "--samples", "{samples}"], 2, "one cut-off without"),
    (["evaluate", "--recall", "{samples}", "--model", "{model}", "--samples", "{samples}"], 2,
     "--recall goes with --retrieval"),
    (["evaluate", "--retrieval", "--recall", "/nonexistent", "--model", "{model}", "--samples", "{samples}"], 2,
     "'--recall': /nonexistent: no such folder"),
    # train-recall
    (["train-recall", "--channels", "two_tower,als", "--samples", "{samples}", "--out", "{out}"], 2,
     "'--channels': must be a comma-separated list of two_tower, item2vec"),
    (["train-recall", "--channels", "item2vec,item2vec", "--samples", "{samples}", "--out", "{out}"], 2,
     "names a channel twice"),
    (["train-recall", "--epochs", "0", "--samples", "{samples}", "--out", "{out}"], 2, "'--epochs'"),
    (["train-recall", "--samples", "/nonexistent", "--out", "{out}"], 2, "/nonexistent: no such folder"),
    (["train-recall", "--samples", "{samples}", "--out", "{file}"], 2, "is a file; give a folder"),
    (["train-recall", "--samples", "{samples}", "--out", "{out}"], 2, "needs a time split"),
    (["train-recall", "--samples", "{samples}", "--out", "{samples}"], 2, "is an input of this command"),
    (["export", "--format", "pickle", "--model", "{model}"], 2, "'--format': must be one of onnx, torchscript"),
    (["export", "--model", "{samples}"], 2, "a samples folder"),
    # prepare: flags checked before any data is read
    (["prepare", "--fractions", "0.5,0.5", "--data", "{log}", "--out", "{out}"], 2, "'--fractions': must be three"),
    (["prepare", "--fractions", "a,b,c", "--data", "{log}", "--out", "{out}"], 2, "'--fractions': must be three"),
    (["prepare", "--fractions", "nan,0,1", "--data", "{log}", "--out", "{out}"], 2, "'--fractions'"),
    (["prepare", "--fractions", "1.5,-0.25,-0.25", "--data", "{log}", "--out", "{out}"], 2, "'--fractions'"),
    (["prepare", "--split", "alphabetical", "--data", "{log}", "--out", "{out}"], 2, "'--split': must be one of"),
    (["prepare", "--format", "xml", "--data", "{log}", "--out", "{out}"], 2, "'--format': must be one of parquet"),
    (["prepare", "--recent-n", "0", "--data", "{log}", "--out", "{out}"], 2, "'--recent-n': must be >= 5, not 0"),
    (["prepare", "--label-threshold", "nan", "--data", "{log}", "--out", "{out}"], 2, "'--label-threshold'"),
    (["prepare", "--items", "/nonexistent.csv", "--data", "{log}", "--out", "{out}"], 2, "'--items'"),
    (["data", "info", "{log}", "--items", "/nonexistent.csv"], 2, "'--items'"),
    (["data", "synth", "--ratings", "5", "--out", "{out}"], 2, "'--ratings'"),
    (["quickstart", "--epochs", "0", "--out", "{out}"], 2, "'--epochs'"),
    # prepare / data info: the readers' own refusals (one line, naming the file and field)
    (["prepare", "--data", "{log}", "--out", "{out}", "--user-col", "userId", "--item-col", "movieId",
      "--time-col", "rating", "--rating-col", "timestamp"], 2, "field timestamp: not a rating"),
    (["data", "info", "{half}", "--user-col", "userId", "--item-col", "movieId", "--time-col", "timestamp",
      "--rating-col", "rating"], 2, "half.csv:50: field timestamp: not unix seconds"),
    (["prepare", "--data", "{ms}", "--out", "{out}"], 2, "field timestamp: looks like milliseconds"),
    (["data", "info", "{ms}"], 2, "field timestamp: looks like milliseconds"),
    (["data", "info", "{far}"], 2, "field timestamp: "),
    (["data", "info", "{long}"], 2, "longer than"),
    (["prepare", "--data", "{long}", "--out", "{out}"], 2, "longer than"),
    (["prepare", "--data", "{dir}", "--items", "{log}", "--out", "{out}"], 2, "--items is for your own logs"),
    # a character device was "is a folder, not a file"
    (["data", "info", "/dev/null"], 2, "/dev/null: is not a regular file (a device, pipe or socket)"),
    (["prepare", "--data", "/dev/null", "--out", "{out}"], 2, "/dev/null: is not a regular file"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli-errors")
    model = root / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"format": "deepcrossing-model"}))
    samples = root / "samples"
    samples.mkdir()
    (samples / "manifest.json").write_text(json.dumps({"splits": {}}))
    (root / "file.txt").write_text("not a folder\n")
    (root / "log.csv").write_text(LOG)
    ms = LOG.splitlines()
    (root / "ms.csv").write_text("\n".join([ms[0]] + [line + "000" for line in ms[1:]]) + "\n")
    (root / "far.csv").write_text(LOG + "9,1,4.0,100000000000000000\n")
    (root / "half.csv").write_text(LOG + "9,1,4.0,964982703.5\n")
    (root / "long.csv").write_bytes(b"userId,movieId,rating,timestamp" + b",x" * (1 << 20) + b"\n1,1,4.0,10\n")
    release = root / "ml-latest-small"
    release.mkdir()
    (release / "ratings.csv").write_text(LOG)
    (release / "movies.csv").write_text("movieId,title,genres\n" + "".join(f"{i},M{i} (1999),Drama\n"
                                                                         for i in range(1, 7)))
    return {"model": str(model), "samples": str(samples), "file": str(root / "file.txt"),
            "log": str(root / "log.csv"), "ms": str(root / "ms.csv"), "far": str(root / "far.csv"),
            "half": str(root / "half.csv"),
            "long": str(root / "long.csv"), "out": str(root / "out"), "dir": str(release)}


@pytest.mark.parametrize(("argv", "code", "fragment"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_flag_errors_are_one_line(argv: list[str], code: int, fragment: str, places: dict[str, str],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.format(**places) for a in argv]
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], err
    assert len(lines[0]) < 400, f"{len(lines[0])} characters"
    assert not Path(places["out"]).exists(), "a refused command wrote its output"


def test_a_good_command_still_runs(places: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "info", places["log"]])
    assert "ratings      48" in capsys.readouterr().out


def test_serve_on_a_port_in_use_is_one_line(places: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --port P` with P taken printed the `serving ... on http://127.0.0.1:P/` banner, loaded the model
    and store, then uvicorn's `ERROR: [Errno 98] ... address already in use` and exit 3."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["serve", "--port", str(port), "--model", places["model"]])
    captured = capsys.readouterr()
    assert exited.value.code == 2, captured.err
    assert captured.err.strip() == (f"error: cannot listen on 127.0.0.1:{port} (Address already in use); stop the "
                                    "other server or pick another --port"), captured.err
    assert "serving" not in captured.out
