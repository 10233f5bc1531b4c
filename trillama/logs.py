"""structlog set-up: every log line of the server is a key/value event.

Request ids travel in structlog's context variables, so a line logged deep inside a route handler
carries the ``request_id`` of the request it serves without threading it through every call.
"""

from __future__ import annotations

import logging
import sys
import threading

import structlog

__all__ = ["configure_logging", "get_logger", "log_format"]

_state = {"format": "console"}


def log_format() -> str:
    """The format :func:`configure_logging` set up (``console`` or ``json``); runners inherit it."""
    return _state["format"]


def configure_logging(*, debug: int = 0, fmt: str = "console") -> None:
    level = logging.DEBUG if debug else logging.INFO
    _state["format"] = fmt
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that use the standard logging module (hypercorn, quart) go to the same stream.
    std_level = logging.WARNING if not debug else logging.DEBUG
    if fmt != "json":
        logging.basicConfig(level=std_level, stream=sys.stderr,
                            format="%(levelname)s %(name)s %(message)s")
        return
    # JSON: every line on stderr must parse, so the standard library's records, warnings and
    # uncaught exceptions (of any thread) are rendered as structlog events too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
        ],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(std_level)
    logging.captureWarnings(True)
    crash_log = structlog.get_logger("trillama.crash")

    def excepthook(exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        crash_log.critical("uncaught_exception", exc_info=(exc_type, exc, tb))

    def thread_excepthook(args) -> None:  # type: ignore[no-untyped-def]
        crash_log.error("thread_exception", thread=getattr(args.thread, "name", None),
                        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
