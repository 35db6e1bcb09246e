"""`python -m cicd.web`: the web server of `make run` (manage.py up) and of the benchmarks.

uvicorn in `--workers` processes, as `uvicorn --workers` runs it, except for how connections
reach the processes. `uvicorn --workers` shares one listening socket between its processes,
and the kernel hands each new connection to whichever process waits in accept() at that
moment: one that has just accepted is soon back waiting, and takes the next one too. Fifty
keep-alive connections opened in a row (a forge's webhook deliveries, runners) landed 43 and
7, 44 and 6, 19 and 31 on two processes, and a burst on them then queued behind the one busy
process while the other idled (bench/README.md, "webhook").

Here each process listens on a socket of its own, all bound to the same port with
SO_REUSEPORT, and the kernel spreads new connections over the sockets by a hash of their
addresses, however busy each process is. The sockets are bound here, before any process
starts, so a port in use is refused at once, and a socket stays open (its connections
queued) for as long as this process runs. A process that exits on its own stops the others:
a server that lost part of its capacity is worse than one that stopped (manage.py up stops
the whole system then, as for any of its processes).
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import socket
import sys
import time

APPLICATION = "cicd.asgi:application"
_BACKLOG = 2048  # uvicorn's default


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets listening on (host, port), with SO_REUSEPORT when there are several.
    OSError (EADDRINUSE) if anything else listens there, even with SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # First a socket without SO_REUSEPORT: binding it fails if anyone listens on the port,
    # where sockets with SO_REUSEPORT would quietly share it with a server of the same user.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]  # port 0: the one the system picked, for all of them
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(_BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _serve(sock: socket.socket, options: dict) -> None:
    """One process: uvicorn serving the application on its own socket until SIGTERM/SIGINT."""
    import uvicorn

    config = uvicorn.Config(APPLICATION, lifespan="off", **options)
    uvicorn.Server(config).run(sockets=[sock])


def serve(*, host: str, port: int, workers: int, log_level: str) -> int:
    """Run `workers` processes until SIGTERM/SIGINT (0) or until one exits on its own (its code)."""
    sockets = listening_sockets(host, port, workers)
    context = multiprocessing.get_context("spawn")
    options = {"host": host, "port": sockets[0].getsockname()[1], "log_level": log_level}
    processes = [
        context.Process(target=_serve, args=(sock, options), name=f"web-{i}") for i, sock in enumerate(sockets)
    ]
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopping.append(signum)) for sig in _SIGNALS}
    try:
        for process in processes:
            process.start()
        code = 0
        while not stopping:
            ended = next((p for p in processes if p.exitcode is not None), None)
            if ended is not None:
                print(f"web: {ended.name} exited on its own (exit code {ended.exitcode})", file=sys.stderr)
                # Killed by signal N shows as -N; reported as a shell would (128 + N).
                code = ended.exitcode if ended.exitcode > 0 else 128 - ended.exitcode if ended.exitcode < 0 else 1
                break
            time.sleep(0.1)
        for process in processes:  # uvicorn's graceful shutdown: open requests are answered
            if process.exitcode is None:
                process.terminate()
        for process in processes:
            process.join()
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in sockets:
            sock.close()


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cicd.web", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="Processes (one Python process runs on one core).")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    try:
        return serve(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    except OSError as exc:
        print(f"web: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
