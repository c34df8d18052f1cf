"""Every metric name the library logs or reads, in one table.

The callbacks, the echo stage, both straggler strategies, the reference models, the report and
the wandb bridge name their metrics from here, so a renamed metric is renamed everywhere; the
README's lists of logged metrics are checked against this table (``tests/test_documents.py``).
Names are plain strings (``"stale/staleness_mean"``): what a logger writes and a report reads.
"""

from __future__ import annotations

from typing import Final


class Loss:
    """The losses of the module being trained (the library's models log them; a report reads them)."""

    TRAIN: Final = "train/loss"
    VAL: Final = "val/loss"
    VAL_ACC: Final = "val/acc"
    TRAIN_FULL: Final = "train/full_loss"  # TargetLoss: the loss on the whole training set


class Progress:
    """``TrainingProgress``: what training consumed and how long it took (every run)."""

    FRESH_SAMPLES: Final = "progress/fresh_samples"
    FRESH_BATCHES: Final = "progress/fresh_batches"
    OPTIMIZER_STEPS: Final = "progress/optimizer_steps"
    ELAPSED_S: Final = "time/elapsed_s"
    DATA_WAIT_S: Final = "time/data_wait_s"
    SIMULATED_S: Final = "time/simulated_s"


class Echo:
    """``DataEchoing``'s own counters."""

    FRESH_BATCHES: Final = "echo/fresh_batches"
    FRESH_SAMPLES: Final = "echo/fresh_samples"
    ECHOED_STEPS: Final = "echo/echoed_steps"
    EFFECTIVE_FACTOR: Final = "echo/effective_factor"
    DATA_WAIT_S: Final = "echo/data_wait_s"


class Stale:
    """Both straggler backends, per server update; the same meaning on each, so reports compare
    simulated and real runs on them. Counters count the whole run, across resumes."""

    STALENESS_MEAN: Final = "stale/staleness_mean"
    STALENESS_MAX: Final = "stale/staleness_max"
    STEP_FACTOR: Final = "stale/step_factor"
    LR: Final = "stale/lr"
    DISCARDED: Final = "stale/discarded"
    CANCELLED: Final = "stale/cancelled"
    K: Final = "stale/k"  # gradients the update averaged (K, Rennala's B): chosen per update with stale.k=auto
    # simulated learners only
    WASTED_TIME: Final = "stale/wasted_time"
    UTILISATION: Final = "stale/utilisation"
    SNAPSHOTS: Final = "stale/snapshots"


class LearnerData:
    """Both straggler backends, when learners echo or wait for their own data (issue 24): what each
    learner's data brought, counted over the run (the cluster's fresh samples are
    ``progress/fresh_samples``). ``{learner}`` is the learner's index (``.format(learner=i)``)."""

    ECHOED_GRADIENTS: Final = "stale/echoed_gradients"  # gradients used that were computed on an echo
    DATA_WAIT_S: Final = "stale/data_wait_s"  # all learners' time waiting for their data
    LEARNER_FRESH_SAMPLES: Final = "stale/learner_{learner}/fresh_samples"
    LEARNER_ECHOED_GRADIENTS: Final = "stale/learner_{learner}/echoed_gradients"
    LEARNER_DATA_WAIT_S: Final = "stale/learner_{learner}/data_wait_s"


class ParameterServer:
    """The parameter server on real processes only."""

    UPDATES_PER_S: Final = "ps/updates_per_s"
    LOSS: Final = "ps/loss"
    GRADIENTS: Final = "ps/gradients"
    LOST_LEARNERS: Final = "ps/lost_learners"
    LIVE_LEARNERS: Final = "ps/live_learners"  # learners alive now (lost ones that rejoined count again)
    JOINS: Final = "ps/joins"  # learners that joined after the start, in this segment of the run
    BYTES_PER_S: Final = "ps/bytes_per_s"  # the server's bytes sent and received per second
    LINK_BYTES_PER_S: Final = "ps/link_bytes_per_s"  # the raw link, timed at the first learner's join
    LINK_FRACTION: Final = "ps/link_fraction"  # bytes_per_s / link_bytes_per_s: near 1, the link limits the run
    VERSION: Final = "ps/version"  # the server's version after the update (never reused, across server restarts too)
    CANCELLED_ARRIVED: Final = "ps/cancelled_arrived"
    LEARNER_GRADIENTS_PER_S: Final = "ps/learner_{learner}/gradients_per_s"  # .format(learner=i)
    # gradients used that were computed on a fresh batch, over the run (echoed ones: LearnerData)
    FRESH_GRADIENTS: Final = "ps/fresh_gradients"
    LEARNER_FRESH_GRADIENTS: Final = "ps/learner_{learner}/fresh_gradients"


class StepTimes:
    """``StepTimeRecorder`` (the advisor's record): one rank's last optimizer step, in seconds; on a
    parameter server the mean over an update's gradients of their learners' previous steps."""

    COMPUTE_S: Final = "time/step_compute_s"  # forward, backward (and the optimizer step where the rank takes it)
    DATA_WAIT_S: Final = "time/step_data_wait_s"  # from the previous step's end to the batch on the device
    SYNC_WAIT_S: Final = "time/step_sync_wait_s"  # waiting for the other ranks (DDP) or the server (a learner)


TABLES: tuple[type, ...] = (Loss, Progress, Echo, Stale, LearnerData, ParameterServer, StepTimes)


def all_names() -> list[str]:
    """Every name of the table (``ps/learner_{learner}/...`` as a pattern), in table order."""
    return [value for table in TABLES for key, value in vars(table).items() if key.isupper()]
