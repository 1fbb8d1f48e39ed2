"""Logging setup for the commands: plain text for a terminal, or one JSON object per line
(``LOG_FORMAT=json``) for log collectors."""

from __future__ import annotations

import json
import logging
import time


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "process", "thread", "message"[, "exception"]}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s "
                                                "[%(process)d] %(message)s")
