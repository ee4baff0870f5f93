"""The HTML report: built on top of the pipeline's outputs (runs, evaluations, studies)."""
