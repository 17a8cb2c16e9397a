"""``masf-edge page``: the operator page of one line (a local web server beside the daemon).

This module stays light (the CLI imports it to build its parser); the server is :mod:`edge.page.server`,
imported when the command runs. See ``docs/page.md``.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``masf-edge page`` beyond --config, --set and --log-level."""
    parser.add_argument("--host", default=None, help="address to serve on (default: page.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: page.port, 8080; 0: any free)")


def run(args: argparse.Namespace) -> int:
    """Serve the page until SIGTERM / SIGINT; 0 after a clean stop.

    Raises:
        EdgeError: bad config, the page not enabled, port in use (the CLI prints one line, exits 2).
    """
    from edge.page.server import run as serve

    return serve(args)
