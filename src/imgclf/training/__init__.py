"""Training: the loop, batches, schedules, callbacks and repeated runs."""
