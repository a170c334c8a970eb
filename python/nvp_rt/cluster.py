"""Ray for work that outgrows one process: an embedded local Ray by default, or a cluster to join.

    with ray_runtime(address=None, num_cpus=2):   # local: started here, shut down on exit
        ...                                       # Ray tasks, actors, Datasets
    with ray_runtime(address="10.0.0.5:6379"):    # join a running cluster; it keeps running after

Where Ray is already initialised (a program of the user's, a test's cluster) it is used as it is and
left running. Ray is imported here, on first use, so importing ``nvp_rt`` never imports it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

PROBE_TIMEOUT_S = 5.0  # ray.init retries an address that does not answer for minutes; a TCP probe fails fast


class ClusterUnavailable(ConnectionError):
    """The Ray cluster named by an address does not answer."""


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Initialise Ray unless it already is; True if this call started it.

    ``address``: None for a local Ray embedded in this process (``num_cpus`` CPUs, no dashboard, workers'
    logs kept out of the driver's output); "host:port", "ray://host:port" or "auto" to join a cluster.
    """
    import ray

    if ray.is_initialized():
        return False
    if address is not None:
        _probe(address)
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, TimeoutError, RuntimeError) as e:
        raise ClusterUnavailable(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    _quiet_ray_data()
    return True


@contextmanager
def ray_runtime(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the block (see ``connect``); shut down after it if the block's ``connect`` started it."""
    import ray

    started = connect(address, num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _probe(address: str) -> None:
    target = address.removeprefix("ray://")
    if target in ("auto", "local"):
        return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnavailable(f"Ray cluster address {address!r} is not HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ClusterUnavailable(f"the Ray cluster at {address} does not answer ({reason})") from None


def _quiet_ray_data() -> None:
    """Ray Data logs each dataset's plan and, off a terminal, its progress: noise around nvp's own summaries
    (its progress bars on a terminal stay)."""
    from ray.data import DataContext

    DataContext.get_current().print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
