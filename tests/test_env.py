"""colabrcnn.env: platform detection, versions, devices, and doctor's checks."""
import json
import sys

import pytest

from colabrcnn import env

GOOD_FACTS = {
    "platform": "colab",
    "backend": "tensorflow",
    "versions": {"python": "3.11.13", "numpy": "2.0.2", "keras": "3.10.0",
                 "tensorflow": "2.19.0", "jax": "0.5.2", "torch": None,
                 "colabrcnn": "0.1.0"},
    "devices": [{"name": "Tesla T4", "kind": "gpu", "memory_bytes": 15360 * 2 ** 20},
                {"name": "CPU (2 cores)", "kind": "cpu", "memory_bytes": 13 * 2 ** 30}],
}


def facts(**changes):
    """GOOD_FACTS with top-level keys or versions ("v_numpy") replaced."""
    out = json.loads(json.dumps(GOOD_FACTS))
    for key, value in changes.items():
        if key.startswith("v_"):
            out["versions"][key[2:]] = value
        else:
            out[key] = value
    return out


def codes(problems):
    return [p.code for p in problems]


# ---------------------------------------------------------------- checks
def test_good_colab_has_no_problems():
    assert env.check(facts()) == []


def test_no_gpu():
    problems = env.check(facts(devices=[{"name": "CPU", "kind": "cpu",
                                         "memory_bytes": None}]))
    assert codes(problems) == ["no_gpu"]
    assert "slow" in problems[0].message
    assert "Runtime > Change runtime type > T4 GPU" in problems[0].fix


def test_tpu_counts_as_accelerator():
    assert env.check(facts(devices=[{"name": "TPU v3", "kind": "tpu",
                                     "memory_bytes": None}])) == []


def test_keras_2():
    problems = env.check(facts(v_keras="2.15.0"))
    assert codes(problems) == ["keras2"]
    assert "2.15.0" in problems[0].message
    assert "pip install -U" in problems[0].fix and "keras>=3" in problems[0].fix


def test_keras_missing():
    problems = env.check(facts(v_keras=None))
    assert codes(problems) == ["no_keras"]
    assert "keras>=3" in problems[0].fix


def test_old_numpy():
    problems = env.check(facts(v_numpy="1.24.3"))
    assert codes(problems) == ["old_numpy"]
    assert "1.24.3" in problems[0].message and "numpy>=1.26" in problems[0].fix


def test_old_tensorflow_only_matters_on_tensorflow_backend():
    assert codes(env.check(facts(v_tensorflow="2.15.1"))) == ["old_tensorflow"]
    assert env.check(facts(v_tensorflow="2.15.1", backend="jax")) == []


def test_old_python():
    problems = env.check(facts(v_python="3.9.18"))
    assert codes(problems) == ["old_python"]
    assert "3.10" in problems[0].message


def test_backend_not_installed():
    problems = env.check(facts(backend="torch"))  # torch is None in GOOD_FACTS
    assert codes(problems) == ["backend_missing"]
    assert "torch" in problems[0].message and "pip install" in problems[0].fix


def test_inference_only_and_unknown_backends():
    assert codes(env.check(facts(backend="numpy"))) == ["inference_backend"]
    assert codes(env.check(facts(backend="theano"))) == ["unknown_backend"]


def test_several_problems_at_once():
    bad = facts(v_keras="2.12.0", v_numpy="1.23.5", v_tensorflow="2.12.0",
                devices=[])
    assert set(codes(env.check(bad))) == {"keras2", "old_numpy", "old_tensorflow",
                                          "no_gpu"}


def test_unknown_facts_raise_nothing():
    assert env.check({}) == []


def test_parse_version():
    assert env.parse_version("2.13.0+cpu") == (2, 13, 0)
    assert env.parse_version("3.0.0rc1") == (3, 0, 0)
    assert env.parse_version("1.26") == (1, 26)
    assert env.parse_version(None) is None
    assert env.parse_version("dev") is None


# ---------------------------------------------------------------- report
def test_format_report_lists_setup_and_problems():
    report = env.doctor(facts(v_numpy="1.24.0", devices=[]))
    text = env.format_report(report)
    assert "colab" in text
    assert "Python" in text and "3.11.13" in text
    assert "tensorflow" in text and "2.19.0" in text
    assert "torch" in text and "not installed" in text
    assert "Problems (2)" in text
    assert "NumPy 1.24.0" in text and "numpy>=1.26" in text
    assert "No GPU found" in text and "T4 GPU" in text


def test_format_report_shows_device_memory():
    text = env.format_report(env.doctor(facts()))
    assert "Tesla T4" in text and "15.0 GiB" in text
    assert "No problems found." in text


def test_real_doctor_runs_and_describes_this_machine():
    report = env.doctor()
    assert report.facts["platform"] in ("colab", "kaggle", "local")
    assert report.facts["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    kinds = [d["kind"] for d in report.facts["devices"]]
    assert kinds[-1] == "cpu" and set(kinds) <= {"gpu", "tpu", "cpu"}
    assert all(isinstance(p, env.Problem) and p.message and p.fix
               for p in report.problems)
    assert "Python" in env.format_report(report)


# ------------------------------------------------------- platform, backend
@pytest.mark.parametrize("environ, expected", [
    ({"COLAB_RELEASE_TAG": "release-colab_20250101"}, "colab"),
    ({"COLAB_GPU": "1"}, "colab"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle"),
    ({"HOME": "/home/me"}, "local"),
])
def test_detect_platform(environ, expected):
    assert env.detect_platform(environ) == expected


def test_keras_backend_rules(tmp_path):
    home = tmp_path / "kh"
    home.mkdir()
    assert env.keras_backend({"KERAS_BACKEND": "jax"}) == "jax"
    assert env.keras_backend({"KERAS_HOME": str(home)}) == "tensorflow"  # no file
    (home / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert env.keras_backend({"KERAS_HOME": str(home)}) == "torch"
    # The environment variable wins over the file, as in Keras.
    assert env.keras_backend({"KERAS_HOME": str(home), "KERAS_BACKEND": "jax"}) == "jax"
    (home / "keras.json").write_text("{not json")
    assert env.keras_backend({"KERAS_HOME": str(home)}) == "tensorflow"


def test_versions_reports_installed_and_missing():
    v = env.versions()
    assert set(v) >= {"python", "numpy", "keras", "tensorflow", "jax", "torch",
                      "colabrcnn"}
    import numpy
    assert v["numpy"] == numpy.__version__
    from colabrcnn import __version__
    assert v["colabrcnn"] == __version__
    assert env._installed_version(("surely-not-a-package-xyz",)) is None


# ----------------------------------------------------------------- devices
def test_parse_nvidia_smi():
    out = "Tesla T4, 15360\nNVIDIA A100-SXM4-40GB, 40960\nNVIDIA H100, [N/A]\n\n"
    devs = env.parse_nvidia_smi(out)
    assert devs == [
        {"name": "Tesla T4", "kind": "gpu", "memory_bytes": 15360 * 2 ** 20},
        {"name": "NVIDIA A100-SXM4-40GB", "kind": "gpu", "memory_bytes": 40960 * 2 ** 20},
        {"name": "NVIDIA H100", "kind": "gpu", "memory_bytes": None},
    ]


def test_devices_uses_nvidia_smi_when_present(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'Tesla T4, 15360'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    devs = env.devices()
    assert devs[0] == {"name": "Tesla T4", "kind": "gpu", "memory_bytes": 15360 * 2 ** 20}
    assert devs[-1]["kind"] == "cpu"


def test_one_nvidia_smi_query_gives_compute_capability(tmp_path, monkeypatch):
    from colabrcnn import hardware
    assert hardware.parse_nvidia_smi("Tesla T4, 15360, 7.5\n") == [
        {"name": "Tesla T4", "kind": "gpu", "memory_bytes": 15360 * 2 ** 20,
         "compute_capability": "7.5"}]
    # A driver older than 510 rejects compute_cap: the query is asked without it.
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\ncase "$1" in *compute_cap*) exit 6;; esac\n'
                    "echo 'Tesla P100-PCIE-16GB, 16280'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert hardware.nvidia_smi_devices() == [
        {"name": "Tesla P100-PCIE-16GB", "kind": "gpu", "memory_bytes": 16280 * 2 ** 20}]


def test_devices_survives_failing_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    devs = env.devices()
    assert devs[-1]["kind"] == "cpu"
    assert all(d["name"] != "NVIDIA-SMI has failed" for d in devs)


# ------------------------------------------------------------ Google Drive
def test_mount_drive_off_colab_is_a_noop(monkeypatch, capsys):
    monkeypatch.setattr(env, "detect_platform", lambda environ=None: "local")
    assert env.mount_drive() is None
    out = capsys.readouterr().out
    assert "not on Colab" in out and "not mounted" in out


def test_mount_drive_on_colab_calls_google_colab(monkeypatch):
    import types
    calls = []
    drive = types.SimpleNamespace(mount=lambda path, force_remount=False:
                                  calls.append((path, force_remount)))
    colab = types.ModuleType("google.colab")
    colab.drive = drive
    if "google" not in sys.modules:  # `from google.colab import` imports google first
        try:
            import google  # noqa: F401  (a namespace package when protobuf is installed)
        except ImportError:
            monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(env, "detect_platform", lambda environ=None: "colab")
    assert env.mount_drive("/content/drive") == "/content/drive"
    assert calls == [("/content/drive", False)]
