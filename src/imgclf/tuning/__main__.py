"""python -m imgclf.tuning --worker I: a local worker process (its spec in IMGCLF_TUNE_SPEC);
python -m imgclf.tuning --trial: one trial's own process (its payload on stdin).
A search itself is `imgclf tune SPACE.yaml ...` (or `python -m imgclf tune ...`)."""

import sys

if "--worker" in sys.argv or "--trial" in sys.argv:
    from ..quiet import import_keras

    import_keras()  # TensorFlow's start-up lines dropped from each worker's and trial's output
if "--worker" in sys.argv:
    from .worker import worker_main

    sys.exit(worker_main(sys.argv[1:]))
if "--trial" in sys.argv:
    from .trial_process import trial_main

    sys.exit(trial_main())
print("error: python -m imgclf.tuning: expected --worker I or --trial (tune's own processes); "
      "run a search with `imgclf tune SPACE.yaml` or `python -m imgclf tune SPACE.yaml`", file=sys.stderr)
sys.exit(2)
