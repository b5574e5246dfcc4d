"""benchmarks/gpu_check.sh --dry-run: the GPU check's whole path on the CPU, tiny.

One run of the script (a subprocess per row, as on the GPU), then the JSON and the
Markdown it wrote are checked: rows, fields, the estimate beside each memory row, the
torchvision leg recorded as "not importable" where torchvision is absent.
"""
import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IDS = ["R101 all mixed 2 images", "fit_to_gpu T4", "train ours (jax)", "train torchvision",
       "inference ours (jax) batch 1", "inference torchvision batch 1"]


def test_dry_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"),
                           "--dry-run", "--out", str(out),
                           "--jax-cache", str(tmp_path / "jax-cache")],
                          capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["meta"]["dry_run"] is True
    assert [g["key"] for g in report["goals"]] == [
        "memory_r101_all_mixed_2", "heads_r101_8_fit", "train_ratio", "infer_ratio",
        "estimate_within"]
    rows = {r["id"]: r for r in report["rows"]}
    assert list(rows) == IDS, proc.stdout[-3000:]

    mem = rows["R101 all mixed 2 images"]
    assert mem["status"] == "ok", mem
    assert (mem["layers"], mem["mixed"], mem["remat"], mem["images"], mem["mini_mask"]) \
        == ("all", True, False, 2, True)
    assert mem["estimate_bytes"] > mem["estimate_activations"] > 0
    assert mem["peak_bytes"] is None and mem["estimate_over_measured"] is None  # no GPU

    fit = rows["fit_to_gpu T4"]
    assert fit["status"] == "ok" and fit["fits"] is True and fit["steps"] == 2
    assert fit["settings"]["MIXED_PRECISION"] == "mixed_float16"   # T4: tensor cores
    assert fit["cap_bytes"] == 15 * 2 ** 30 and fit["estimate_bytes"] > 0

    for key in ("train ours (jax)", "inference ours (jax) batch 1"):
        assert rows[key]["status"] == "ok" and rows[key]["images_per_second"] > 0, rows[key]
    torchvision = "ok" if importlib.util.find_spec("torchvision") else "not importable"
    assert rows["train torchvision"]["status"] == torchvision
    assert rows["inference torchvision batch 1"]["status"] == torchvision
    if torchvision == "not importable":
        assert report["summary"]["train_ratio"] is None

    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (DRY RUN")
    lines = md.splitlines()
    table = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| row")
             and not ln.startswith("| goal") and not ln.startswith("| GPU")]
    assert len(table) == 5 + len(IDS)            # five goals, one line per row
    mem_line = next(ln for ln in lines if ln.startswith("| R101 all mixed 2 images"))
    est_gib = f"{mem['estimate_bytes'] / 2 ** 30:.2f}"
    assert f"| {est_gib} |" in mem_line          # the estimate beside the (empty) peak
    assert any(ln.startswith("| inference torchvision batch 1") and torchvision in ln
               for ln in lines)
