"""The HTML report: built on top of the pipeline's outputs (runs, evaluations, studies).

    build.py       make_report(folder), compare(run_dirs): gather a page, render it, write it
    pages.py       which sections a run, evaluation, study or comparison page gets
    sections.py    one section's content as plain data: strings, rows, PNG bytes
    sources.py     reading run, evaluation, study and repeats folders
    formatting.py  how numbers are written
    templates/     the Jinja2 templates (autoescaped) and report.css

Figures come from imgclf.figures, metrics from imgclf.evaluation.metrics.
"""
