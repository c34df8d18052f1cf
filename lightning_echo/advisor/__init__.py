"""The straggler and stall advisor: record a run's step times, predict what each remedy would gain
on them, adapt synchrony while training (issue 22). The trace format is :mod:`.trace`."""
