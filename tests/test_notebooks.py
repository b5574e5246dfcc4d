"""The notebooks: run every one headless in SMOKE mode (CPU, tiny settings) and check
what it leaves behind; check the files themselves (outputs stripped, Colab badge,
papermill ``parameters`` cell, jupytext ``.py`` twin in sync, an install cell that
leaves TensorFlow/Keras/NumPy alone).

The four notebooks run two at a time (each in its own kernel and temporary working
directory): a run is mostly single-threaded graph tracing, so two share 2 cores well.
"""
import concurrent.futures
import glob
import json
import os
import re
import time

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbclient)")
jupytext = pytest.importorskip("jupytext", reason="pip install -e '.[dev]' (jupytext)")
pytest.importorskip("ipykernel", reason="pip install -e '.[dev]' (ipykernel)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = ["01_quickstart", "02_train_on_your_data", "03_predict", "04_memory"]
CELL_TIMEOUT = 600


def _path(name, ext="ipynb"):
    return os.path.join(NB_DIR, f"{name}.{ext}")


def _read(name):
    return nbformat.read(_path(name), as_version=4)


def _parameters_index(nb):
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def inject_parameters(nb, **params):
    """Papermill's convention: a cell tagged ``injected-parameters`` right after the
    ``parameters`` cell overrides its values."""
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(_parameters_index(nb) + 1, cell)
    return nb


def kernel_env(workdir):
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)   # the kernel's inline backend shows figures
    env.update(
        KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
        COLABRCNN_SKIP_INSTALL="1", COLABRCNN_CACHE=os.path.join(workdir, "cache"),
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def execute(name, workdir):
    """Run notebook ``name`` in SMOKE mode in ``workdir``; -> (notebook, seconds, error)."""
    nb = inject_parameters(_read(name), SMOKE=True)
    os.makedirs(workdir, exist_ok=True)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    start = time.time()
    error = None
    try:
        client.execute(env=kernel_env(str(workdir)))
    except Exception as e:  # noqa: BLE001 - reported by the test, with the cell
        error = e
    seconds = time.time() - start
    nbformat.write(nb, os.path.join(workdir, f"{name}.executed.ipynb"))
    return nb, seconds, error


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """All four notebooks, run two at a time: {name: (workdir, notebook, seconds, error)}."""
    root = tmp_path_factory.mktemp("notebooks")
    dirs = {name: str(root / name) for name in NOTEBOOKS}
    # Longest first, so the pair finishes together.
    order = ["02_train_on_your_data", "04_memory", "01_quickstart", "03_predict"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(execute, name, dirs[name]) for name in order}
        out = {name: (dirs[name],) + f.result() for name, f in futures.items()}
    timings = ", ".join(f"{n}: {out[n][2]:.0f} s" for n in NOTEBOOKS)
    print(f"\nnotebook run times (two at a time): {timings}")
    return out


def _error_cells(nb):
    bad = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                bad.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}\n"
                           f"{cell.source[:300]}")
    return bad


def _stdout(nb):
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


# ------------------------------------------------------------------ execution
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom_in_smoke_mode(executed, name):
    workdir, nb, seconds, error = executed[name]
    bad = _error_cells(nb)
    assert error is None and not bad, f"{name} failed after {seconds:.0f} s:\n" + \
        "\n".join(bad or [str(error)[-3000:]])
    assert "SMOKE/CI run: not installing anything" in _stdout(nb)


def test_quickstart_writes_pictures_metrics_and_checkpoints(executed):
    workdir, nb, _, _ = executed["01_quickstart"]
    runs = glob.glob(os.path.join(workdir, "runs", "quickstart", "shapes*"))
    assert len(runs) == 1
    run = runs[0]
    assert glob.glob(os.path.join(run, "val_*.png"))
    assert glob.glob(os.path.join(run, "mask_rcnn_shapes_0001.h5"))
    with open(os.path.join(run, "coco_metrics.json")) as f:
        metrics = json.load(f)
    assert "segm" in metrics and "AP50" in metrics["segm"]
    # Pictures are shown inline too (the training examples, the loss curves).
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images


def test_train_notebook_trains_two_stages_evaluates_and_exports(executed):
    workdir, nb, _, _ = executed["02_train_on_your_data"]
    out = _stdout(nb)
    assert "format: via" in out and "No problems found." in out
    # The stand-in for the COCO weights loaded without the class-specific heads.
    assert re.search(r"Loaded \d+ layers from coco_stand_in\.h5", out)
    assert "excluded: " in out and "mrcnn_class_logits" in out
    run = glob.glob(os.path.join(workdir, "runs", "mydata*"))[0]
    # Stage 1 (heads, epoch 1) then stage 2 (fine-tune, epoch 2) in the same run folder.
    assert os.path.exists(os.path.join(run, "mask_rcnn_mydata_0002.h5"))
    assert "Starting at epoch 1" in out
    with open(os.path.join(run, "evaluation", "coco_metrics.json")) as f:
        assert "segm" in json.load(f)
    assert os.path.exists(os.path.join(run, "evaluation", "errors.html"))
    assert os.path.exists(os.path.join(run, "mydata.keras"))
    with open(os.path.join(run, "class_names.json")) as f:
        assert json.load(f) == ["BG", "coin"]
    # The data browser is an ipywidgets widget.
    widgets = [o for c in nb.cells for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets


def test_predict_notebook_writes_overlays_masks_json_and_video(executed):
    workdir, nb, _, _ = executed["03_predict"]
    run = glob.glob(os.path.join(workdir, "runs", "smoke*"))[0]
    pred = os.path.join(run, "predictions")
    assert len(glob.glob(os.path.join(pred, "images", "overlays", "*.png"))) == 3
    assert len(glob.glob(os.path.join(pred, "images", "masks", "*.png"))) == 3
    with open(os.path.join(pred, "images", "coco_predictions.json")) as f:
        assert len(json.load(f)["images"]) == 3
    assert os.path.getsize(os.path.join(pred, "smoke_clip_pred.mp4")) > 0


def test_memory_notebook_writes_the_lever_table(executed):
    workdir, nb, _, _ = executed["04_memory"]
    with open(os.path.join(workdir, "runs", "memory", "memory_levers.json")) as f:
        table = json.load(f)
    rows = {r["lever"]: r for r in table["rows"]}
    assert rows["baseline (float32)"]["status"] == "ok"
    assert rows["baseline (float32)"]["s_per_step"] > 0
    assert rows["heads only"]["status"] == "ok"
    assert rows["heads only"]["estimate_GiB"] < rows["baseline (float32)"]["estimate_GiB"]
    assert os.path.exists(os.path.join(workdir, "runs", "memory", "memory_levers.png"))
    assert "If training still runs out of memory" in _stdout(nb)


# ------------------------------------------------------------------ the files
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_outputs_are_stripped(name):
    nb = _read(name)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata, f"{name}: widget state saved in the metadata"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_badge_kaggle_note_and_parameters_cell(name):
    nb = _read(name)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    badge = (f"https://colab.research.google.com/github/OWNER/colabrcnn/blob/main/"
             f"notebooks/{name}.ipynb")
    assert badge in first.source and "colab-badge.svg" in first.source
    assert "Kaggle" in first.source
    params = nb.cells[_parameters_index(nb)]
    assert params.cell_type == "code"
    assert re.search(r"^SMOKE = False\b", params.source, flags=re.M)
    # Opening in Colab asks for a GPU runtime.
    assert nb.metadata.get("accelerator") == "GPU"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_paired_py_file_has_the_same_code_cells(name):
    py = jupytext.read(_path(name, "py"))
    ipynb = _read(name)

    def code(nb):
        return [c.source.strip() for c in nb.cells if c.cell_type == "code"]

    assert code(py) == code(ipynb), (
        f"notebooks/{name}.py and .ipynb differ: edit one, then run "
        f"`jupytext --sync notebooks/{name}.ipynb`")
    tags = [c.metadata.get("tags", []) for c in py.cells if c.cell_type == "code"]
    assert ["parameters"] in tags


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_installs_only_the_package(name):
    nb = _read(name)
    installs = [c.source for c in nb.cells if c.cell_type == "code" and "pip" in c.source]
    assert len(installs) == 1, "one install cell"
    src = installs[0]
    assert "SMOKE" in src and "COLABRCNN_SKIP_INSTALL" in src
    call = re.search(r"check_call\((.*?)\)\n", src, flags=re.S).group(1)
    for word in ("tensorflow", "keras", "numpy", "--upgrade", "-U", "--force-reinstall"):
        assert f'"{word}"' not in call and f"'{word}'" not in call, call
    assert "PACKAGE" in call
    assert "!pip" not in src   # plain Python, so the .py twin runs as a script too
