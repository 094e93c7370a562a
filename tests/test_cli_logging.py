"""Entry points called again in one process (a notebook, a test session) keep logging after the
sys.stderr they first saw has been swapped and closed."""
import io
import logging

import pytest

from radar_train.cli.common import reopen_closed_streams, run_main, tidy_lightning_logging


def _closed_stream() -> io.TextIOWrapper:
    stream = io.TextIOWrapper(io.BytesIO())  # as a captured stderr: flush and write raise once closed
    stream.close()
    return stream


def _handler(stream, tag: str) -> logging.StreamHandler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"{tag}: %(message)s"))
    return handler


def test_lightning_handler_on_a_closed_stderr_writes_to_the_current_one(capsys):
    handler = _handler(_closed_stream(), "reopened")
    logger = logging.getLogger("lightning")
    logger.addHandler(handler)
    try:
        tidy_lightning_logging()
        logging.getLogger("lightning.fabric.utilities.seed").warning("Seed set to 0")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "reopened: Seed set to 0" in err
    assert "Logging error" not in err


def test_root_handler_on_a_closed_stderr_is_reopened_by_every_entry_point(capsys):
    handler = _handler(_closed_stream(), "root")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with pytest.raises(SystemExit) as done:
            run_main("radar-test", lambda args: logging.getLogger("radar_train.x").warning("still here"), [])
    finally:
        root.removeHandler(handler)
    assert done.value.code == 0
    err = capsys.readouterr().err
    assert "root: still here" in err and "Logging error" not in err


def test_open_streams_and_file_handlers_are_left_alone(tmp_path):
    open_stream = io.StringIO()
    plain = _handler(open_stream, "open")
    to_file = logging.FileHandler(tmp_path / "run.log")
    logger = logging.getLogger("radar_train.test_cli_logging")
    for h in (plain, to_file):
        logger.addHandler(h)
    try:
        reopen_closed_streams(logger)
        assert plain.stream is open_stream
        assert to_file.stream.name == str(tmp_path / "run.log")
    finally:
        for h in (plain, to_file):
            logger.removeHandler(h)
        to_file.close()


@pytest.mark.parametrize("argv", [["radar_train.cli.train", "--help"], ["radar_train.cli.generate", "--help"]])
def test_help_into_a_pipe_whose_reader_left_ends_quietly(argv):
    """`radar-train fit --help | head -1`: the reader closes the pipe; the command ends quietly, nothing on stderr
    (status 141 as shell tools end, or 0 where argparse's help printing ignores the closed stream itself).
    radar-train printed `error: radar-train fit: Broken pipe (errno 32)` glued to its help text, status 1."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # (before the command writes: its first write finds no reader)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141), err
    assert err == "", err
