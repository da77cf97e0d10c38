"""A console logger for scripted runs (`imagesim materialize`, `imagesim demo`): one line per record.

Dagster's own console logger prints a step failure with its whole stack trace; on a terminal the
line that matters (the error's own message, which names the file or cell and what to do) is lost
in it. Here warnings show as ``WARNING <step>: <first line>``; errors are left to the caller, which
prints each failed step's message once (``orchestration.instance``). The full records, tracebacks
included, stay in the run's event log (the Dagster UI).
"""

import logging
import sys

from dagster import Field, logger


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key") or meta.get("job_name") or "run"
        message = (meta.get("orig_message") or record.getMessage()).strip()
        return f"{record.levelname} {step}: {message.splitlines()[0] if message else ''}"


@logger(config_schema={"log_level": Field(str, is_required=False, default_value="WARNING")},
        description="One line per record (errors without their traceback), for scripted runs")
def one_line_console(init_context) -> logging.Logger:
    """A logger printing one line per record to stderr."""
    log = logging.getLogger("imagesim.runs")
    log.setLevel(init_context.logger_config["log_level"].upper())
    log.propagate = False
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLine())
        handler.addFilter(lambda record: record.levelno < logging.ERROR)
        log.addHandler(handler)
    return log


SCRIPTED_RUN_CONFIG = {"loggers": {"one_line_console": {"config": {"log_level": "WARNING"}}}}
