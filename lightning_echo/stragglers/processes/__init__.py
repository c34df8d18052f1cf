"""A parameter server on real processes (torch.distributed, gloo channels): the server and
learner loops that run the straggler-tolerant variants of :mod:`lightning_echo.core.schedule`
across processes and machines. Its Lightning strategy, ``ParameterServerStrategy``, is exported by
:mod:`lightning_echo.stragglers` (and ``lightning_echo``). Design note: README.md here."""

from lightning_echo.stragglers.processes.learner import LearnerReport, LearnerSession, Work, learner_delays, run_learner
from lightning_echo.stragglers.processes.protocol import (
    Kind,
    Message,
    ParameterLayout,
    ParameterServerError,
    ProtocolError,
)
from lightning_echo.stragglers.processes.server import (
    ParameterServer,
    PendingUpdate,
    ServerReport,
    UpdateRecord,
    plain_sgd,
)
from lightning_echo.stragglers.processes.link import LinkMeasurement, link_fraction, measure_link
from lightning_echo.stragglers.processes.rendezvous import Address
from lightning_echo.stragglers.processes.transport import (
    SERVER_RANK,
    Joined,
    PeerLost,
    Transport,
    connect,
    join,
    learner_index,
    learner_rank,
    serve,
)

__all__ = [
    "SERVER_RANK",
    "Address",
    "Joined",
    "LinkMeasurement",
    "Kind",
    "LearnerReport",
    "LearnerSession",
    "Message",
    "ParameterLayout",
    "ParameterServer",
    "ParameterServerError",
    "PeerLost",
    "PendingUpdate",
    "ProtocolError",
    "ServerReport",
    "Transport",
    "UpdateRecord",
    "Work",
    "connect",
    "join",
    "link_fraction",
    "measure_link",
    "learner_delays",
    "learner_index",
    "learner_rank",
    "plain_sgd",
    "run_learner",
    "serve",
]
