"""Gunicorn settings of the production command and of `make run` (one place):

    gunicorn -c python:console.gunicorn_conf 'console:create_app()'

Every SSE stream and every `?wait=` long-poll is a client that mostly waits. With
gunicorn's thread workers each one held a thread (4 × 16 of them: the 65th waiting
client hung the whole API). Here each worker runs gevent: a waiting client costs a
greenlet, its socket and a few tens of KiB, never a thread; psycopg 3 (≥ 3.1.14)
cooperates with gevent's monkey-patching, so a query blocks only its own greenlet.

What bounds the number of open clients (README, "Capacity"):
* `worker_connections` per worker (CONSOLE_WORKER_CONNECTIONS, default 5000): past it a
  worker stops accepting, and the kernel queues new connections in the `backlog`;
* the file descriptors of a worker (`ulimit -n`; one per client, plus the pool's);
* memory: about 34 KiB per open client (greenlet, socket buffers, the generator: measured);
* the database pool (CONSOLE_POOL_SIZE + overflow, per worker) bounds how many requests
  run a statement at the same moment: waiting clients hold no connection.

Any setting may be overridden on the command line (`-w 4`, `-b 0.0.0.0:8000`) or by
GUNICORN_CMD_ARGS.
"""
import os

worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = int(os.environ.get("CONSOLE_WORKER_CONNECTIONS", "5000"))
backlog = 4096
# A request that is not a stream or long-poll answers in milliseconds; the longest
# legitimate hold is a 55 s long-poll, and streams end by themselves after
# SSE_MAX_STREAM_SECONDS. gevent workers keep heartbeating while they serve, so the
# timeout only catches a worker whose event loop is truly stuck.
timeout = 60
graceful_timeout = 10
# Idle keep-alive connections are held longer than clients and proxies hold theirs (Node's
# undici 4 s, nginx and AWS load balancers 60 s), so the far end always closes first: with
# 5 s, an EventSource reconnecting (`retry: 2000`) on a pooled connection sometimes met the
# server closing it at that moment ("other side closed"). An idle connection costs a greenlet.
keepalive = 75
reuse_port = True  # every worker accepts on its own socket: the kernel spreads the load
control_socket_disable = True
