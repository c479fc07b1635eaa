"""How many messages wait in each queue, read from the broker (Redis or RabbitMQ alike).

A passive ``queue_declare`` answers the message count on every kombu transport: on Redis it is
the LLEN of the queue's list (summed over its priority lists), on RabbitMQ the broker's count of
ready messages. Messages a worker has taken but not yet acknowledged are not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery
from kombu.exceptions import ChannelError, OperationalError

log = logging.getLogger(__name__)


def fetch_queue_depths(celery: Celery, queues: Iterable[str]) -> dict[str, int | None]:
    """Messages waiting per queue; 0 for a queue the broker does not know yet (Redis drops an
    empty list's key), None for every queue while the broker cannot be reached."""
    names = list(queues)
    depths: dict[str, int | None] = dict.fromkeys(names)
    with celery.connection_for_read() as conn:
        unreachable = (OperationalError, OSError, *conn.connection_errors)
        not_found = (ChannelError, *conn.channel_errors)
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2)
            channel = conn.channel()
            try:
                for name in names:
                    try:
                        depths[name] = int(channel.queue_declare(name, passive=True).message_count)
                    except not_found:  # no such queue (yet): nothing waits in it
                        depths[name] = 0
                        channel = _reopen(conn, channel)  # AMQP closes a channel after a 404
            finally:
                _close(channel)
        except unreachable as e:
            log.warning("queue depths: the broker is unreachable: %s", e)
            return dict.fromkeys(names)
    return depths


def _reopen(conn, channel):
    _close(channel)
    return conn.channel()


def _close(channel) -> None:
    try:
        channel.close()
    except Exception:  # noqa: BLE001 — closing a broken channel may raise; nothing to do about it
        pass
