"""`cnndsl eval` (top-1/top-5, test-time augmentation) and `cnndsl features` (a layer's
activations for a linear classifier: the notes' "use network as feature extractor")."""
import json

import numpy as np
import pytest
import torch

from cnndsl.cli import main
from helpers import FAST, TINY, trained_run

SPEC = TINY.format(train=FAST)
BRANCHY = "INPUT(1, 8, 8) -> CONV3-8 -> RES(CONV3-8 -> RELU) -> CONCAT(CONV1-4, POOL3/1(pad=1)) -> FC-10"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("eval"), SPEC, "--limit", 400)


def eval_json(capsys, *argv) -> dict:
    assert main(["eval", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("tta", ["none", "flip", "10crop"])
def test_eval_with_test_time_augmentation(run, capsys, tta):
    result = eval_json(capsys, run / "last.pt", "--tta", tta, "--batch-size", 100)
    assert result["images"] == 899 and result["tta"] == tta and result["split"] == "test"
    assert 0.1 < result["top1"] <= result["top5"] <= 1.0


def test_eval_repeats_the_runs_test_accuracy(run, capsys):
    summary = json.loads((run / "summary.json").read_text())
    result = eval_json(capsys, run / "last.pt")
    assert result["top1"] == pytest.approx(summary["test_acc"], abs=1e-12)
    assert result["top5"] == pytest.approx(summary["test_top5"], abs=1e-12)


def test_eval_other_splits_and_data(run, capsys):
    assert eval_json(capsys, run / "best.pt", "--split", "val")["images"] == 40
    assert eval_json(capsys, run / "best.pt", "--data", "synthetic:100")["images"] == 20
    assert main(["eval", str(run / "best.pt")]) == 0
    assert capsys.readouterr().out.startswith("test (digits, 899 images, tta none): top-1 ")


@pytest.mark.parametrize("layer, shape", [("hidden", (32,)), ("conv1", (16, 8, 8)), ("pool1", (16, 4, 4))])
def test_features_of_a_layer(run, tmp_path, capsys, layer, shape):
    out = tmp_path / "f.npz"
    assert main(["features", str(run / "last.pt"), "--layer", layer, "--out", str(out)]) == 0
    assert f"wrote {out}: layer {layer}" in capsys.readouterr().out
    f = np.load(out)
    assert f["train_x"].shape == (360, *shape) and f["val_x"].shape == (40, *shape)
    assert f["test_x"].shape == (899, *shape) and f["test_y"].shape == (899,)
    assert str(f["layer"]) == layer and list(f["class_names"]) == [str(i) for i in range(10)]


def test_features_feed_a_linear_classifier(run, tmp_path, capsys):
    """The last layer's features are the logits: their argmax is eval's top-1; a
    linear classifier on the hidden layer does about as well as the network."""
    from sklearn.linear_model import LogisticRegression

    out = tmp_path / "f.pt"
    assert main(["features", str(run / "last.pt"), "--layer", "fc1", "--out", str(out)]) == 0
    f = torch.load(out, weights_only=True)
    top1 = (f["test_x"].argmax(1) == f["test_y"]).double().mean().item()
    capsys.readouterr()
    assert top1 == pytest.approx(eval_json(capsys, run / "last.pt")["top1"], abs=1e-12)
    main(["features", str(run / "last.pt"), "--layer", "hidden", "--out", str(tmp_path / "h.npz")])
    h = np.load(tmp_path / "h.npz")
    clf = LogisticRegression(max_iter=2000).fit(h["train_x"], h["train_y"])
    assert clf.score(h["test_x"], h["test_y"]) > top1 - 0.1


def test_features_of_branch_joins(tmp_path, capsys):
    (tmp_path / "b.cnn").write_text(BRANCHY + "\n")
    assert main(["train", str(tmp_path / "b.cnn"), "--limit", "100", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 0
    for layer, shape in (("res1", (8, 8, 8)), ("concat1", (12, 8, 8))):
        out = tmp_path / f"{layer}.npz"
        assert main(["features", str(tmp_path / "run" / "best.pt"), "--layer", layer, "--out", str(out)]) == 0
        assert np.load(out)["test_x"].shape == (899, *shape)


@pytest.mark.parametrize("argv, words", [
    (["--layer", "hiden"], "no layer named 'hiden' — did you mean 'hidden'?"),
    (["--layer", "hidden", "--out", "f.csv"], "write features to a .npz or .pt file"),
])
def test_features_errors(run, capsys, argv, words):
    assert main(["features", str(run / "last.pt"), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
