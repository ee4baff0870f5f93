"""The pipeline's modes with their HTML reports: what `imgclf train`, `evaluate` and `tune` run.

The stages know nothing of reports: `training.train`, `evaluation.run_evaluation` and
`tuning.tune` each write their own results, and this module draws the report on top, reusing
what the stage still holds in memory (the model, the images, the predictions) so that a report
costs seconds, not a second evaluation. `imgclf.train`, `imgclf.evaluate` and `imgclf.tune` are
these functions.
"""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig


def train(config: TrainConfig | str | Path | None = None, **kwargs):
    """`training.train`, then RUN_DIR/report.html unless the config says `report: false`.

    Takes the same arguments as imgclf.training.trainer.train; returns its RunResult."""
    from .training.trainer import train as train_stage

    result = train_stage(config, **kwargs)
    try:
        if result.config.report:
            from .report.build import make_report

            make_report(result.run_dir, model=result.model, data=result.data, val_probs=result.val_probs,
                        verbose=bool(kwargs.get("verbose", 1)))
    finally:  # the caller keeps the paths and metrics, not the model and images
        result.model = result.data = result.val_probs = None
    return result


def evaluate(model: str | Path, data: str | None = None, test_data: str | None = None,
             out_dir: str | Path | None = None, tta: bool | None = None, verbose: bool = True,
             report: bool = True) -> dict:
    """`evaluation.evaluate`, then OUT/report.html (gallery, calibration at the stored temperature,
    robustness) unless report=False. Returns {set: {loss, accuracy, ...}}. `tta`: None uses the
    test-time augmentation the model records, True or False forces it."""
    from .evaluation.evaluator import run_evaluation

    done = run_evaluation(model, data, test_data, out_dir, tta=tta, verbose=verbose)
    if report:
        from .report.build import make_report
        from .report.sources import EvalSet

        clf, s = done.classifier, done.images
        x = s.all_images()
        # gallery, calibration and robustness use single-pass probabilities, as predict and serve
        # return by default (and as train fitted the temperature on); the results table may use TTA
        probs = clf.predict_proba(x, calibrated=False) if done.tta else done.results[done.held_out]["probs"]
        make_report(done.out_dir, eval_set=EvalSet(done.held_out, x, s.y, probs, list(s.files), clf.class_names),
                    predict=lambda batch: clf.predict_proba(batch, calibrated=False),
                    temperature=clf.temperature, verbose=verbose)
    return done.results


def tune(space_file: str | Path | None = None, *, report: bool = True, **kwargs):
    """`tuning.tune`, then STUDY_DIR/report.html (trials table, search plots, best trial) unless
    report=False or no trial finished. Takes tuning.tune's arguments; returns its TuneResult."""
    from .tuning.tuner import tune as tune_stage

    result = tune_stage(space_file, **kwargs)
    if report and result.counts["done"]:
        from .report.build import make_report

        make_report(result.study_dir)
    return result


__all__ = ["train", "evaluate", "tune"]
