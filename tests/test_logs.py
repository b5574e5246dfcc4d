"""The colabrcnn logger reaches the notebook's (here pytest's) current stdout."""
import logging

import colabrcnn  # noqa: F401  (configures the package logger)
from colabrcnn import logs


def test_info_records_reach_current_stdout(capsys):
    logging.getLogger("colabrcnn.some.module").info("Resuming from %s", "x.h5")
    assert capsys.readouterr().out == "Resuming from x.h5\n"


def test_debug_hidden_by_default_and_configure_is_idempotent(capsys):
    logs.configure()
    logs.configure()
    logger = logging.getLogger("colabrcnn")
    ours = [h for h in logger.handlers if type(h).__module__ == "colabrcnn.logs"]
    assert len(ours) == 1, logger.handlers
    logging.getLogger("colabrcnn.x").debug("detail")
    assert capsys.readouterr().out == ""
    logs.configure(logging.DEBUG)
    try:
        logging.getLogger("colabrcnn.x").debug("detail")
        assert capsys.readouterr().out == "detail\n"
    finally:
        logs.configure(logging.INFO)
