"""colabrcnn.probe: build a model once, time a few steps, report what went wrong."""
from tiny_model import TinyConfig

from colabrcnn import probe


def test_measure_times_steps_and_reports_out_of_memory():
    config = TinyConfig()
    row = probe.measure(config, "heads", steps=2, warmup=1, seed=0)
    assert row["status"] == "ok", row
    assert row["step_seconds"] > 0 and row["loss"] == row["loss"]   # a number, not NaN
    assert abs(row["images_per_second"] * row["step_seconds"] - config.BATCH_SIZE) < 1e-6
    assert row["peak_bytes"] is None          # no GPU here: the backend has no counter
    assert row["rss_bytes"] > 0

    def out_of_memory(model, batch):
        assert batch["input_image"].shape[0] == config.BATCH_SIZE
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    row = probe.measure(config, "heads", steps=1, on_built=out_of_memory)
    assert row["status"] == "out of memory" and row["step_seconds"] is None

    row = probe.measure(config, "no(such", steps=1)   # a bad layers regex: an error row
    assert row["status"].startswith("error: ")
