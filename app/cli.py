"""Operator commands: ``genstream serve``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import uvicorn

from app.api.app import create_app
from app.api.services import services
from app.settings import Settings, SettingsError


class _Server(uvicorn.Server):
    """uvicorn, plus: on SIGINT/SIGTERM end open SSE streams at once.

    uvicorn waits for open connections before it runs the lifespan shutdown, so a
    long-lived stream would hold the shutdown hostage; clients resume after restart.
    """

    def handle_exit(self, sig: int, frame: Any) -> None:
        app = self.config.loaded_app
        state = getattr(getattr(app, "app", app), "state", None)
        loop = asyncio.get_event_loop()
        if state is not None and "services" in state:
            loop.call_soon_threadsafe(services(state).begin_shutdown)
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> None:
    """Run the HTTP service until interrupted."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=10,
        access_log=False,
    )
    _Server(config).run()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``genstream`` command."""
    parser = argparse.ArgumentParser(prog="genstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service (settings from GENSTREAM_*)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.command == "serve":
        serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
