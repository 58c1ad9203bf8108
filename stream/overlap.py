"""Send a Redis command, do CPU work while the server runs it, then read the reply.

Why: the worker's biggest Redis call (the compare-and-set of a 512-drive batch)
keeps the server busy for ~3 ms, and the worker has CPU work that does not
depend on it (decoding the next batch). A helper thread could do that work
beside the wait, but one process has one GIL: when the reply arrives, the event
loop waits for the thread to hand the GIL back (up to the 5 ms switch
interval) — measured, an ``MGET`` took 1.1 ms alone and 5.1 ms with a decode on
a thread beside it, and the thread bought nothing overall. Doing the work on
the loop thread between sending and reading overlaps it with the server and
costs no hand-over.

Only for a standalone Redis client (one connection from its pool). On a Redis
Cluster the window state's calls go through pipelines and take no such work:
the next batch is then decoded when it is prepared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError


async def call_meanwhile(client: Any, meanwhile: Callable[[], None], *args: Any) -> Any:
    """The command's raw reply (no redis-py response callback), ``meanwhile()`` run once it is sent.

    ``meanwhile`` must not raise and must not touch Redis (it runs while this
    call holds a connection). Errors of the command itself are raised as
    redis-py raises them; a connection that broke, or whose reply was not read,
    is closed rather than given back to the pool with a reply still in flight.
    """
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_command(*args)
        meanwhile()
        return await conn.read_response()
    except ResponseError:
        raise  # the server answered (e.g. NOSCRIPT): the connection is in step
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
