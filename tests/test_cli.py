"""The `colabrcnn` command: --version, doctor, and the subcommand registry."""
import os
import subprocess
import sys

from colabrcnn import __version__, cli, env
from colabrcnn.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"colabrcnn {__version__}"


def test_doctor_prints_report_and_exits_zero(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "Python" in out and "Platform" in out and "Devices" in out
    assert ("Problems" in out) or ("No problems found." in out)


def fake_doctor(monkeypatch, problems):
    report = env.Report(lines=["Platform:  local"], problems=problems)
    monkeypatch.setattr(env, "doctor", lambda facts=None: report)


def test_doctor_strict_fails_only_with_problems(monkeypatch, capsys):
    fake_doctor(monkeypatch, [env.Problem("no_gpu", "No GPU found.", "get one")])
    assert cli.main(["doctor"]) == 0
    assert cli.main(["doctor", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "No GPU found." in out and "get one" in out
    fake_doctor(monkeypatch, [])
    assert cli.main(["doctor", "--strict"]) == 0


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "doctor" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_registry_drives_the_parser(monkeypatch, capsys):
    seen = {}

    def add_arguments(parser):
        parser.add_argument("--times", type=int, default=1)

    def run(args):
        seen["times"] = args.times
        return 3

    monkeypatch.setitem(cli.SUBCOMMANDS, "echo", cli.Subcommand("say hi", add_arguments, run))
    assert cli.main(["echo", "--times", "4"]) == 3
    assert seen == {"times": 4}
    assert cli.main(["--help"]) == 0
    assert "say hi" in capsys.readouterr().out


def test_package_errors_become_a_message_not_a_traceback(monkeypatch, capsys):
    def run(args):
        raise ConfigError("IMAGE_MAX_DIM must be divisible by 64")

    monkeypatch.setitem(cli.SUBCOMMANDS, "boom", cli.Subcommand("fail", lambda p: None, run))
    assert cli.main(["boom"]) == 1
    err = capsys.readouterr().err
    assert "IMAGE_MAX_DIM must be divisible by 64" in err and "Traceback" not in err


def run_module(*args):
    child_env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "colabrcnn", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=child_env)


def test_python_m_colabrcnn_doctor():
    proc = run_module("doctor")
    assert proc.returncode == 0, proc.stderr
    assert "Python" in proc.stdout and "Backend" in proc.stdout


def test_python_m_colabrcnn_version_and_doctor_stay_light():
    # The command must not import Keras or a backend (seconds each, and doctor has to
    # work when they are broken).
    code = ("import sys; from colabrcnn.cli import main; main(['doctor']); "
            "heavy = [m for m in ('keras', 'tensorflow', 'jax', 'torch') "
            "if m in sys.modules]; print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    version = run_module("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"colabrcnn {__version__}"


def test_bad_option_is_a_usage_error(capsys):
    assert cli.main(["doctor", "--bogus"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err
