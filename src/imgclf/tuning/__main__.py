"""python -m imgclf.tuning --worker I: a local worker process (its spec in IMGCLF_TUNE_SPEC);
python -m imgclf.tuning --trial: one trial's own process (its payload on stdin);
python -m imgclf.tuning SPACE.yaml ...: the same as `imgclf tune SPACE.yaml ...`."""

import sys

if "--worker" in sys.argv:
    from .worker import worker_main

    sys.exit(worker_main(sys.argv[1:]))
if "--trial" in sys.argv:
    from .trial_process import trial_main

    sys.exit(trial_main())
from ..cli import main

sys.exit(main(["tune", *sys.argv[1:]]))
