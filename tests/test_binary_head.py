"""A one-unit sigmoid head on two classes (the notes' AlexNet: Dense(1, sigmoid), binary
cross-entropy), end to end: training, metrics, probabilities, predict, explain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnzoo
from cnnzoo.analysis.metrics import class_logits, result_from_logits
from cnnzoo.analysis.predict import predict_images
from cnnzoo.cli.eval_cmd import evaluate_run
from cnnzoo.cli.main import main
from cnnzoo.data import read_image
from cnnzoo.inference import load_model
from cnnzoo.rundir import RunDir

FAST = dict(quiet=True, num_threads=1, tensorboard=False, plots=False)


def test_one_logit_scores_as_binary_cross_entropy_and_a_threshold() -> None:
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    labels = torch.tensor([1, 1, 0, 0])
    result = result_from_logits(logits, labels, num_classes=2, class_names=["cat", "dog"])
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    assert result.loss == pytest.approx(bce.item(), rel=1e-6)
    assert result.top1 == 0.5  # 2.0 -> dog (right), -1.0 -> cat (wrong), 0.5 wrong, -3.0 right
    assert result.confusion.tolist() == [[1, 1], [1, 1]]
    probs = torch.softmax(class_logits(logits), dim=1)
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(logits[:, 0]))


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory, pets) -> tuple[Path, Path, cnnzoo.History]:
    base = tmp_path_factory.mktemp("binary")
    folder, run = base / "pets", base / "run"
    pets(folder, 40)
    model = cnnzoo.create_model("lenet5", num_classes=1, in_chans=3)
    history = cnnzoo.fit(model, f"imagefolder:{folder}", split=[60, 10, 10], epochs=4,
                         batch_size=10, lr=3e-3, num_workers=0, output_dir=str(run),
                         **FAST)  # fmt: skip
    return folder, run, history


def test_a_module_with_one_output_trains_with_binary_cross_entropy(binary_run) -> None:
    folder, run, history = binary_run
    assert history.model.fc.out_features == 1
    # Colour tells the classes apart: the sigmoid head learns them.
    assert history.metrics["test_top1"] == 1.0 and history.history["accuracy"][-1] > 0.9
    log = (run / "train.log").read_text()
    assert "one sigmoid unit, binary cross-entropy" in log
    # The test loss is the binary cross-entropy of the model's logits on the test images (the
    # absolute tolerance is for a run that separated the colours completely: loss ~1e-11).
    test = RunDir(run).read_splits().splits["test"]
    loaded = load_model(run)
    batch = torch.stack([loaded.preprocess(read_image(p, 3)) for p in test.paths])
    with torch.no_grad():
        logits = loaded.model(batch)
    assert logits.shape == (10, 1)
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], torch.tensor(test.labels).float())
    assert history.metrics["test_loss"] == pytest.approx(bce.item(), rel=1e-4, abs=1e-7)
    # Python's predict gives what Keras' gives for Dense(1, sigmoid): (N, 1) probabilities.
    probabilities = cnnzoo.predict(history.model, [str(p) for p in test.paths])
    assert probabilities.shape == (10, 1)
    np.testing.assert_allclose(probabilities[:, 0], torch.sigmoid(logits[:, 0]).numpy(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_evaluate_and_predict_of_a_binary_run_name_both_classes(binary_run, tmp_path,
                                                                capsys) -> None:  # fmt: skip
    folder, run, history = binary_run
    result, _ = evaluate_run(run)
    assert result.num_classes == 2 and result.n == 10
    assert result.top1 == history.metrics["test_top1"]
    loaded = load_model(run)
    assert loaded.class_names == ["cat", "dog"]
    test = RunDir(run).read_splits().splits["test"]
    predictions = predict_images(loaded, test.paths, topk=5)
    assert all(sorted(p.labels) == ["cat", "dog"] for p in predictions)
    assert all(sum(p.probs) == pytest.approx(1.0) for p in predictions)
    code = main(["predict", str(run), *map(str, test.paths[:2]), "--plot", str(tmp_path / "p"),
                 "--cam"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "cat" in out and "dog" in out
    assert len(list((tmp_path / "p").glob("*_top5.png"))) == 2


def test_the_cli_takes_a_sigmoid_head_and_refuses_impossible_ones(pets, tmp_path, capsys) -> None:
    folder = tmp_path / "pets"
    pets(folder, 12)
    common = ["train", "--model", "lenet5", "--epochs", "1", "--batch-size", "8", "--quiet",
              "--no-tensorboard", "--no-plots", "--num-workers", "0", "--num-threads", "1"]
    code = main([*common, "--dataset", f"imagefolder:{folder}", "--model-arg", "num_classes=1",
                 "-o", str(tmp_path / "ok")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert config["model_kwargs"]["num_classes"] == 1 and config["data"]["num_classes"] == 2
    assert load_model(tmp_path / "ok").model.fc.out_features == 1
    for dataset, units, fragment in ((f"imagefolder:{folder}", 3, "has 2 classes"),
                                     ("digits", 1, "needs two classes; digits has 10")):
        code = main([*common, "--dataset", dataset, "--model-arg", f"num_classes={units}",
                     "-o", str(tmp_path / f"bad{units}")])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and err.count("\n") == 1, err
        assert not (tmp_path / f"bad{units}").exists()
