"""The benchmark harness behind ``scripts/bench``: load generator, relay, report.

Modules, one idea each: ``stats`` and ``verify`` (pure statistics and stream checks),
``sse`` and ``httpclient`` (a minimal HTTP/1.1 + SSE client on asyncio streams), ``load`` (the
load generator), ``procstat`` (CPU and memory from /proc), ``hostspeed`` (how quick the
host's cores are through a run), ``processes`` (the service, relay, profiler and host
probe as child processes), ``relay`` (the non-durable baseline server),
``hotspots`` (py-spy output summarised), ``report`` (markdown and PNG), ``run`` (a level,
end to end) and ``__main__`` (the command line).
"""
