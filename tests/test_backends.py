"""The same model builds, trains a few steps and detects on JAX and PyTorch.

Each backend runs in its own process (Keras fixes the backend at import). The child
checks its own results and prints a JSON summary that the test also checks.
"""
import json

import pytest

from conftest import run_in_backend

SMOKE = r"""
import json, os
import numpy as np
import keras
from colabrcnn import MaskRCNN
from colabrcnn.data import shapes
from tests.tiny_model import tiny_config

def smoke_config():
    # The shared tiny config; NAME names the checkpoints checked below.
    return tiny_config(NAME="smoke", STEPS_PER_EPOCH=3, VALIDATION_STEPS=1)

keras.utils.set_random_seed(0)
logs = os.environ["SMOKE_LOGS"]
ds = shapes(4, 64, seed=0)
model = MaskRCNN("training", smoke_config(), logs)
history = model.train(ds, ds, learning_rate=0.01, epochs=2, layers="all", seed=0, verbose=0)
losses = history.history["loss"]
assert all(np.isfinite(losses)), losses
images = [ds.load_image(i) for i in range(3)]   # 3 images: a padded second batch
results = model.detect(images)
assert len(results) == 3
for r in results:
    n = len(r["class_ids"])
    assert r["rois"].shape == (n, 4) and r["masks"].shape == (64, 64, n)
    assert r["masks"].dtype == bool and np.all((r["class_ids"] >= 1) & (r["class_ids"] <= 3))
    assert np.all(np.diff(r["scores"]) <= 1e-6)   # sorted by score
# The checkpoint loads into a fresh inference model and gives the same detections.
infer = MaskRCNN("inference", smoke_config(), logs)
infer.load_weights(model.find_last(), by_name=True)
again = infer.detect(images)
for a, b in zip(results, again):
    np.testing.assert_array_equal(a["class_ids"], b["class_ids"])
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-4, atol=1e-6)
print("RESULT " + json.dumps({"backend": keras.backend.backend(), "losses": losses,
                              "detections": [len(r["class_ids"]) for r in results]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_model_trains_and_detects_on_backend(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOKE_LOGS", str(tmp_path))
    out = run_in_backend(backend, SMOKE)
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["backend"] == backend
    assert len(result["losses"]) == 2
    # Checkpoints of both epochs were written.
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1
    assert sorted(p.name for p in runs[0].glob("*.h5")) == [
        "mask_rcnn_smoke_0001.h5", "mask_rcnn_smoke_0002.h5", "mask_rcnn_smoke_best.h5"]
