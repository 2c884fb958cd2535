"""Every reader of a run sees the data split the run trained with: evaluate, predict --split,
resume; recorded in the run, so a folder that gains files later changes nothing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnnzoo.cli.eval_cmd import evaluate_run
from cnnzoo.cli.main import main
from cnnzoo.train import fit

FAST = dict(quiet=True, num_threads=1, tensorboard=False, plots=False)


@pytest.fixture(scope="module")
def pet_fit(tmp_path_factory, pets) -> tuple[Path, Path, Any]:
    """lenet5 trained one epoch on a 60 + 60 image folder split 90/20/10 (the notes' way):
    (the folder, the run, fit's History)."""
    base = tmp_path_factory.mktemp("pets")
    folder, run = base / "pets", base / "run"
    pets(folder, 60)
    history = fit(model="lenet5", dataset=f"imagefolder:{folder}", split=[90, 20, 10], epochs=1,
                  batch_size=16, num_workers=0, output_dir=str(run), **FAST)  # fmt: skip
    return folder, run, history


@pytest.fixture(scope="module")
def pet_run(pet_fit) -> tuple[Path, Path]:
    return pet_fit[:2]


def test_evaluate_scores_the_runs_own_test_split(pet_run) -> None:
    folder, run = pet_run
    config = json.loads((run / "config.json").read_text())
    assert config["split"] == [90, 20, 10]
    metrics = json.loads((run / "metrics.json").read_text())
    result, info = evaluate_run(run)
    # The 10 images the run held out, scored by the weights the run ended with: the very
    # figure training printed (a re-split 0.8/0.1/0.1 would score 12 other images).
    assert result.n == 10
    assert result.top1 == pytest.approx(metrics["test_top1"], abs=1e-12)
    assert result.loss == pytest.approx(metrics["test_loss"], rel=1e-6)
    val, _ = evaluate_run(run, split="val")
    assert val.n == 20


def test_python_reads_the_runs_image_folder_as_the_run_split_it(pet_fit) -> None:
    import cnnzoo
    from cnnzoo.rundir import RunDir

    folder, run, history = pet_fit
    metrics = json.loads((run / "metrics.json").read_text())
    for model in (run, history.model):
        scores = cnnzoo.evaluate(model, f"imagefolder:{folder}")
        assert scores["accuracy"] == pytest.approx(metrics["test_top1"], abs=1e-12)
        assert scores["loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    # The same folder written another way is still the run's own, split as recorded.
    spelled = f"imagefolder:{folder.parent}/../{folder.parent.name}/{folder.name}"
    probabilities = cnnzoo.predict(history.model, spelled)
    test = RunDir(run).read_splits().splits["test"]
    assert probabilities.shape == (10, 2)
    assert np.array_equal(probabilities, cnnzoo.predict(run, list(test.paths)))


def test_the_test_files_are_recorded_and_never_seen_in_training(pet_run) -> None:
    from cnnzoo.rundir import RunDir

    folder, run = pet_run
    recorded = RunDir(run).read_splits()
    assert recorded is not None and recorded.root == folder
    sizes = {name: len(split) for name, split in recorded.splits.items()}
    assert sizes == {"train": 90, "val": 20, "test": 10}
    test = set(recorded.splits["test"].paths)
    assert not test & set(recorded.splits["train"].paths)
    assert not test & set(recorded.splits["val"].paths)
    assert all(path.is_file() and path.parent.parent == folder for path in test)


def test_a_folder_that_gained_files_is_still_scored_on_the_recorded_split(
    pet_run, pets, tmp_path, capsys
) -> None:
    import shutil

    folder, run = pet_run
    grown = tmp_path / "pets"
    shutil.copytree(folder, grown)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    # The copied run points at the copied folder, as a run moved with its data would.
    config = json.loads((copy / "config.json").read_text())
    config["dataset"] = f"imagefolder:{grown}"
    (copy / "config.json").write_text(json.dumps(config))
    before, _ = evaluate_run(copy)
    pets(grown, 7, start=500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after, _ = evaluate_run(copy)
    said = " ".join(str(w.message) for w in caught)
    assert "changed since the run trained (14 image(s) added, 0 file(s) missing)" in said
    assert after.n == 10 and after.top1 == before.top1 and after.loss == before.loss
    code = main(["evaluate", str(copy), "--output", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 0 and "changed since the run trained" in err


def test_resume_and_a_lost_file_keep_to_the_recorded_split(pet_run, pets, tmp_path) -> None:
    import shutil

    from cnnzoo.rundir import RunDir

    folder, run = pet_run
    grown, copy = tmp_path / "pets", tmp_path / "run"
    shutil.copytree(folder, grown)
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["dataset"] = f"imagefolder:{grown}"
    (copy / "config.json").write_text(json.dumps(config))
    pets(grown, 5, start=700)
    recorded = RunDir(copy).read_splits(grown)
    lost = recorded.splits["test"].paths[0]
    lost.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, _ = evaluate_run(copy)
        fit(resume=str(copy), epochs=2, **FAST)
    said = [str(w.message) for w in caught if "changed since" in str(w.message)]
    assert said and "10 image(s) added, 1 file(s) missing: 1 test" in said[0]
    assert result.n == 9
    log = (copy / "train.log").read_text().splitlines()
    assert "90 train / 20 val / 9 test" in [line for line in log if "params)" in line][-1]
    # The record stays what the run started with: the lost file is still missing next time.
    assert len(json.loads((copy / "splits.json").read_text())["splits"]["test"]) == 10


def test_the_input_line_says_what_the_image_files_are(pet_run, pets, tmp_path) -> None:
    folder, run = pet_run
    line = next(x for x in (run / "train.log").read_text().splitlines() if x.startswith("input:"))
    assert line == "input: lenet5 needs exactly 32 px; image files of 20x20 px decoded at 32x32"
    mixed = tmp_path / "mixed"
    pets(mixed, 4, side=48)
    pets(mixed, 4, start=100, side=96)
    fit(model="resnet20", dataset=f"imagefolder:{mixed}", split=[6, 0, 2], val_split=0.0,
        epochs=1, batch_size=4, num_workers=0, output_dir=str(tmp_path / "r"), **FAST)  # fmt: skip
    log = (tmp_path / "r" / "train.log").read_text()
    assert ("input: image files from 48x48 to 96x96 px decoded at 224x224 (the image-folder "
            "default) fit resnet20 as they are") in log


def test_predict_plots_the_runs_own_held_out_images(pet_run, tmp_path, capsys) -> None:
    from cnnzoo.rundir import RunDir

    folder, run = pet_run
    capsys.readouterr()
    code = main(["predict", str(run), "--split", "test", "--plot", str(tmp_path / "plots")])
    out = capsys.readouterr().out
    assert code == 0
    charts = sorted((tmp_path / "plots").glob("*_top5.png"))
    assert len(charts) == 10 and (tmp_path / "plots" / "predictions.png").stat().st_size > 0
    test = RunDir(run).read_splits().splits["test"]
    flat = "".join(out.split())
    assert all(path.name in flat for path in test.paths)
    result, _ = evaluate_run(run)
    right = round(result.top1 * 10)
    assert f"top-1correct:{right}/10" in flat and "withtheirsplit'slabels" in flat


def test_predict_split_of_an_in_memory_dataset_and_its_errors(tmp_path, capsys) -> None:
    run = tmp_path / "digits"
    fit(model="lenet5", dataset="digits", epochs=1, output_dir=str(run), **FAST)
    capsys.readouterr()
    code = main(["predict", str(run), "--split", "test", "--limit", "12", "--topk", "3",
                 "--plot", str(tmp_path / "plots")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "top-1 correct:" in out and "/12 (" in out
    assert len(list((tmp_path / "plots").glob("*_top3.png"))) == 12
    assert "digits/test/00000" in out and "digits/test/00358" in out  # spread over all 359
    for argv, fragment in ((["--split", "test", "x.png"], "or --split"),
                           ([], "or --split"),
                           (["x.png", "--limit", "3"], "--limit goes with --split")):
        code = main(["predict", str(run), *argv])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and err.count("\n") == 1, err
    code = main(["predict", "lenet5", "--weights", "digits", "--split", "test"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a run" in err
