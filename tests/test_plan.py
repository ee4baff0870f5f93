"""The auto recipe's plan (imgclf.training.plan): chosen from the data and the budget, printed,
recorded in the run's config and kept on resume; `imgclf train` uses it unless told otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

import imgclf
from imgclf.cli import main
from imgclf.training import plan
from imgclf.training.plan import Facts, data_facts, make_plan


def speed(rate):
    """image_seconds on a machine of `rate` FLOP/s: FLOPs per image proportional to width^2 and pixels."""
    def image_seconds(widths, input_size, batch_size, precision):
        widths = widths or [64, 64, 64]
        return 1e6 * sum(w * w for w in widths) / 1000 * (input_size / 32) ** 2 / rate
    return image_seconds


FAST = speed(1e13)  # a machine on which every net fits
SLOW = speed(1e9)


def test_a_large_set_of_small_images_gets_the_narrow_net_at_32_px():
    values = make_plan(Facts(45_000, 10, 32, 1.0), set(), 300, FAST)
    assert values["input_size"] == 32 and values["model_options"]["widths"] == plan.NARROW
    assert values["epochs"] == plan.wanted_epochs(45_000) == 5
    assert values["warmup_epochs"] == pytest.approx(0.2 * 5) and values["time_budget"] is None
    assert "class_weight" not in values and values["plan"]["starts_from"] == "fast80"
    assert "45,000 images in 10 classes" in values["plan"]["text"] and "5 epochs" in values["plan"]["text"]


def test_a_small_unbalanced_photo_set_gets_64_px_the_widest_net_that_fits_and_class_weights():
    facts = Facts(3_000, 10, 400, 7.1)
    fast = make_plan(facts, set(), 600, FAST)
    assert fast["input_size"] == 64 and fast["model_options"]["widths"] == list(plan.WIDTHS[0])
    assert fast["epochs"] == plan.wanted_epochs(3_000) and fast["class_weight"] == "balanced"
    assert fast["bias_lr_scale"] == 64.0 and fast["plan"]["starts_from"] == "fast94"
    slow = make_plan(facts, set(), 600, SLOW)  # nothing fits: the narrow net, fewer epochs
    assert slow["model_options"]["widths"] == plan.NARROW and 1 <= slow["epochs"] < fast["epochs"]
    longer = make_plan(facts, set(), 6000, SLOW)
    assert longer["epochs"] > slow["epochs"]  # a larger budget buys more epochs


def test_fields_the_user_set_are_not_planned():
    values = make_plan(Facts(3_000, 10, 400, 7.1), {"epochs", "input_size", "class_weight", "model_options"},
                       600, FAST)
    assert not {"epochs", "input_size", "class_weight", "model_options", "warmup_epochs"} & set(values)
    assert "the configured epochs" in values["plan"]["text"]


def test_the_plan_names_the_augmentations_the_run_uses():
    cfg = imgclf.make_config(recipe="auto", augment_crop=0.35, mixup=0.2, augment_translate=0)
    assert plan.augmentation_text(cfg) == "flip + crop + MixUp"
    assert plan.augmentation_text(imgclf.make_config(augment_flip=False)) == "no augmentation"
    values = make_plan(Facts(3_000, 10, 400, 1.0), set(), 600, FAST, {"augmentation": plan.augmentation_text(cfg)})
    assert ": fastnet " in values["plan"]["text"] and "settings, flip + crop + MixUp, best epoch kept" in values["plan"]["text"]


def test_a_set_too_small_for_ten_steps_gets_a_smaller_batch():
    assert make_plan(Facts(500, 3, 64, 1.0), set(), 60, FAST)["batch_size"] == 32
    assert "batch_size" not in make_plan(Facts(5_000, 3, 64, 1.0), set(), 60, FAST)


def test_the_probe_times_real_training_steps_of_the_configured_model():
    from imgclf.config import make_config

    cfg = make_config(recipe="auto", input_size=16, batch_size=8)
    seconds = plan.step_probe(cfg, 3, steps=2)
    assert 0 < seconds < 60  # per image; a bound that only catches a unit mistake
    calls = []
    real = plan.step_probe
    try:
        plan.step_probe = lambda c, n, steps=plan.PROBE_STEPS: calls.append((c.model, c.model_options["widths"],
                                                                            c.input_size, c.batch_size)) or 1e-3
        image_seconds = plan.probed_image_seconds(cfg, 3)
        narrow = image_seconds(plan.NARROW, 32, 64, "float32")
        wide = image_seconds([64, 256, 256], 32, 64, "float32")
    finally:
        plan.step_probe = real
    assert calls == [("fastnet", plan.NARROW, 32, 64)]  # one probe, of fast80's net; wider nets by FLOPs
    assert narrow == 1e-3 and wide > 3 * narrow


def make_photos(root, counts, size=(120, 90)):
    rng = np.random.default_rng(0)
    for split, per_class in counts.items():
        for c, n in enumerate(per_class):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                x = (rng.integers(0, 60, (size[1], size[0], 3)) + 90 * c).astype(np.uint8)
                Image.fromarray(x).save(d / f"{i}.jpg")
    return root


def test_data_facts_count_the_training_images_and_read_sizes_from_headers(tmp_path):
    root = make_photos(tmp_path / "d", {"train": [12, 3], "validation": [2, 2]})
    facts = data_facts(str(root))
    assert facts == Facts(15, 2, 90, 4.0)  # the validation folder is not training data
    carved = make_photos(tmp_path / "c", {"train": [10, 10]})
    assert data_facts(str(carved), val_fraction=0.2).n_train == 16


def test_imgclf_train_plans_by_default_records_the_plan_and_resume_keeps_it(tmp_path, capsys, monkeypatch):
    root = make_photos(tmp_path / "d", {"train": [16, 16], "validation": [4, 4]})
    run = tmp_path / "run"
    assert main(["train", "-d", str(root), "-o", str(run), "--epochs", "1", "--time-budget", "30s",
                 "--no-report"]) == 0
    out = capsys.readouterr().out
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["recipe"] == "auto" and cfg["model"] == "fastnet" and cfg["input_size"] == 64
    assert cfg["epochs"] == 1 and cfg["time_budget"] is None and cfg["batch_size"] == 16
    assert cfg["plan"]["images"] == 32 and cfg["plan"]["budget_seconds"] == 30
    meta = imgclf.load_model(run / "model.keras")[1]
    assert meta["recipe"] == "auto" and meta["input_size"] == 64
    assert "plan: 32 images in 2 classes (median side 90 px, largest class 1.0x the smallest): fastnet" in out
    # a run resumed from its config.yaml is not planned (nor probed) again
    monkeypatch.setattr(plan, "step_probe", lambda *a, **k: pytest.fail("planned again on resume"))
    (run / "model.keras").unlink()
    again = imgclf.train(resume=run, verbose=0, report=False)
    assert again.config.plan == cfg["plan"] and again.config.epochs == 1


def test_a_named_recipe_or_a_config_file_is_not_planned(tmp_path, capsys):
    root = make_photos(tmp_path / "d", {"train": [6, 6]})
    run = tmp_path / "run"
    assert main(["train", "-d", str(root), "-o", str(run), "--recipe", "seed", "--epochs", "1",
                 "--input-size", "16", "--batch-size", "4", "--val-fraction", "0.25", "--no-report", "-q"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["recipe"] == "seed" and cfg["model"] == "seed_cnn" and cfg["plan"] == {}
    out = capsys.readouterr().out
    assert "plan:" not in out and "Epoch" not in out  # -q: no plan, no progress ...
    assert "| Accuracy" in out and f"run directory: {run}" in out  # ... but the results and the run folder


def test_an_input_too_small_for_the_planned_net_is_one_error_line(tmp_path, capsys):
    root = make_photos(tmp_path / "d", {"train": [6, 6]})
    assert main(["train", "-d", str(root), "-o", str(tmp_path / "run"), "--input-size", "8", "--epochs", "1",
                 "--val-fraction", "0.25", "--no-report", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: input_size: model fastnet cannot be built for 8x8 images"), err
    assert not (tmp_path / "run").exists()


def test_fine_tuning_is_planned_at_the_pretrained_models_size(tmp_path):
    """Under --init-from the plan trains at the size the source model learnt its features at (the
    shipped CIFAR-10 model: 32 px), not the 64 px that 90-px photos get from scratch."""
    from imgclf.config import make_config

    root = make_photos(tmp_path / "d", {"train": [16, 16], "validation": [4, 4]})
    scratch = make_config(recipe="auto", data=str(root))
    tuned = make_config(recipe="auto", data=str(root), init_from="cifar10")
    assert plan.plan_input_size(scratch, set())[1].input_size == 64
    facts, cfg = plan.plan_input_size(tuned, set())
    assert cfg.input_size == 32
    asked = make_config(recipe="auto", data=str(root), init_from="cifar10", input_size=48)
    assert plan.plan_input_size(asked, {"input_size"})[1].input_size == 48  # the user's size wins
    values = make_plan(facts, set(), None, FAST, {"input_size": 32}, input_size=plan.pretrained_input_size(cfg))
    assert values["input_size"] == 32 and " at 32 px" in values["plan"]["text"]
