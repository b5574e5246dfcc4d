"""colabrcnn.memory: mixed precision choice, the estimate, fit_to_gpu, presets, OOM help.

All arithmetic: no GPU, no model build (except one parameter-count check against a
small built model).
"""
import re

import pytest

from colabrcnn import Config
from colabrcnn import hardware, memory, probe
from colabrcnn.errors import ConfigError, GPUMemoryError

GiB = 2 ** 30
T4 = {"name": "Tesla T4", "kind": "gpu", "memory_bytes": 15360 * 2 ** 20}
P100 = {"name": "Tesla P100-PCIE-16GB", "kind": "gpu", "memory_bytes": 16280 * 2 ** 20}
CPU = {"name": "CPU (2 cores)", "kind": "cpu", "memory_bytes": 13 * GiB}


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(hardware, "local_devices", lambda refresh=False: [dict(CPU)])


def matterport(**kw):
    """matterport's defaults (ResNet-101, 1024x1024, 2 images, 200 ROIs) on COCO."""
    return Config(NAME="mp", NUM_CLASSES=81, **kw)


def total(cfg, layers="all", **kw):
    kw.setdefault("mixed_precision", False)
    return memory.estimate_memory(cfg, layers, **kw).total


# Which lever a fit_to_gpu line reports, by the setting it starts with.
LINE_LEVER = [("MIXED_PRECISION", "mixed_precision"), ("REMAT", "remat"),
              ("USE_MINI_MASK", "mini_mask"), ("TRAIN_ROIS_PER_IMAGE", "rois"),
              ("MAX_GT_INSTANCES", "max_gt"), ("IMAGES_PER_GPU", "batch"),
              ("IMAGE_RESIZE_MODE", "crop"), ("BACKBONE", "backbone"),
              ("IMAGE_MAX_DIM", "image_size"), ("IMAGE_MIN_DIM", "image_size")]


def levers_of(lines):
    out = []
    for line in lines:
        for prefix, name in LINE_LEVER:
            if line.startswith(prefix + " ="):
                out.append(name)
                break
    return out


def in_lever_order(names):
    idx = [memory.LEVER_NAMES.index(n) for n in names]
    return idx == sorted(idx)


# ------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("name, expected", [
    ("Tesla T4", "mixed_float16"), ("T4", "mixed_float16"),
    ("NVIDIA A100-SXM4-40GB", "mixed_float16"), ("NVIDIA L4", "mixed_float16"),
    ("NVIDIA H100 80GB HBM3", "mixed_float16"), ("Tesla V100-SXM2-16GB", "mixed_float16"),
    ("NVIDIA GeForce RTX 3090", "mixed_float16"), ("NVIDIA A10G", "mixed_float16"),
    ("Tesla P100-PCIE-16GB", None), ("Tesla K80", None), ("Tesla P4", None),
    ("NVIDIA GeForce GTX 1080 Ti", None), ("Some Future Card", None),
])
def test_auto_policy_by_gpu_name(name, expected):
    cfg = matterport()
    assert memory.mixed_precision_policy(cfg, [{"name": name, "kind": "gpu"}, CPU]) \
        == expected


def test_auto_policy_cpu_tpu_and_names():
    cfg = matterport()
    assert memory.mixed_precision_policy(cfg, [CPU]) is None
    assert memory.mixed_precision_policy(cfg, []) is None
    assert memory.mixed_precision_policy(cfg, ["TPU v3"]) == "mixed_bfloat16"
    assert memory.mixed_precision_policy(cfg, [{"name": "TPU (accel0)", "kind": "tpu"}]) \
        == "mixed_bfloat16"
    assert memory.mixed_precision_policy(cfg, "T4") == "mixed_float16"


def test_compute_capability_beats_the_name():
    cfg = matterport()
    new = {"name": "Mystery GPU", "kind": "gpu", "compute_capability": "8.0"}
    old = {"name": "Mystery GPU", "kind": "gpu", "compute_capability": "6.1"}
    assert memory.mixed_precision_policy(cfg, [new]) == "mixed_float16"
    assert memory.mixed_precision_policy(cfg, [old]) is None
    assert memory.gpu_compute_capability("Tesla T4") == (7, 5)
    assert memory.gpu_compute_capability("Tesla P100-PCIE-16GB") == (6, 0)


def test_explicit_policies():
    assert memory.mixed_precision_policy(matterport(MIXED_PRECISION=True), [CPU]) \
        == "mixed_float16"
    assert memory.mixed_precision_policy(matterport(MIXED_PRECISION=True), [P100]) \
        == "mixed_float16"
    assert memory.mixed_precision_policy(matterport(MIXED_PRECISION=True), ["TPU v2"]) \
        == "mixed_bfloat16"
    assert memory.mixed_precision_policy(matterport(MIXED_PRECISION=False), [T4]) is None
    for policy in ("mixed_float16", "mixed_bfloat16"):
        assert memory.mixed_precision_policy(matterport(MIXED_PRECISION=policy), [CPU]) \
            == policy


def test_local_devices_reads_compute_capability(monkeypatch):
    # One nvidia-smi query gives name, memory and compute capability.
    monkeypatch.setattr(hardware, "nvidia_smi_devices", lambda timeout=10:
                        hardware.parse_nvidia_smi("Mystery GPU, 15360, 7.5\n"))
    devs = memory.local_devices(refresh=True)
    try:
        assert devs[0]["compute_capability"] == "7.5"
        assert memory.mixed_precision_policy(matterport()) == "mixed_float16"
    finally:
        monkeypatch.undo()
        memory.local_devices(refresh=True)   # forget the fake GPU


# ------------------------------------------------------------------ estimate
def test_parameter_counts_match_matterport():
    est = memory.estimate_memory(matterport(), "all", mixed_precision=False)
    assert est.params == 64_158_584        # matterport's mask_rcnn_coco model summary
    heads = memory.estimate_memory(matterport(), "heads", mixed_precision=False)
    assert heads.trainable_params < est.trainable_params < est.params
    assert est.total == sum(getattr(est, p) for p in est.PARTS)


def test_parameter_counts_match_a_built_model():
    import numpy as np

    from colabrcnn import MaskRCNN
    cfg = Config(NAME="count", NUM_CLASSES=4, BACKBONE="resnet18", IMAGE_MAX_DIM=64,
                 IMAGE_MIN_DIM=64, TRAIN_ROIS_PER_IMAGE=8, MAX_GT_INSTANCES=4,
                 POST_NMS_ROIS_TRAINING=64, POST_NMS_ROIS_INFERENCE=64,
                 PRE_NMS_LIMIT=128, MIXED_PRECISION=False)
    model = MaskRCNN("training", cfg, model_dir="/tmp/colabrcnn-test-memory")
    km = model.keras_model
    assert memory.estimate_memory(cfg, "all").params == \
        sum(int(np.prod(v.shape)) for v in km.weights)
    for layers in ("heads", "4+", "all"):
        model.set_trainable(layers)
        assert memory.estimate_memory(cfg, layers).trainable_params == \
            sum(int(np.prod(v.shape)) for v in km.trainable_weights), layers


def test_estimate_grows_with_image_batch_and_rois():
    sizes = [total(matterport(IMAGE_MAX_DIM=s, IMAGE_MIN_DIM=min(800, s)))
             for s in (256, 512, 768, 1024)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    batches = [total(matterport(IMAGES_PER_GPU=b)) for b in (1, 2, 4)]
    assert batches == sorted(batches) and len(set(batches)) == 3
    rois = [total(matterport(TRAIN_ROIS_PER_IMAGE=r)) for r in (64, 128, 200)]
    assert rois == sorted(rois) and len(set(rois)) == 3
    gts = [total(matterport(MAX_GT_INSTANCES=g)) for g in (35, 50, 100)]
    assert gts == sorted(gts)


def test_estimate_lower_for_heads_mixed_precision_remat_and_levers():
    cfg = matterport()
    by_layers = [total(cfg, layers) for layers in ("heads", "5+", "4+", "3+", "all")]
    assert by_layers == sorted(by_layers) and len(set(by_layers)) == 5
    heads = memory.estimate_memory(cfg, "heads", mixed_precision=False)
    full = memory.estimate_memory(cfg, "all", mixed_precision=False)
    assert heads.backbone < 0.1 * full.backbone   # frozen backbone keeps almost nothing
    assert total(cfg, mixed_precision=True) < 0.75 * total(cfg)
    assert memory.estimate_memory(cfg, mixed_precision=True).bytes_per_activation == 2
    assert total(cfg.copy(REMAT=True)) < total(cfg)
    assert total(cfg.copy(REMAT=True), "heads") == total(cfg, "heads")
    assert total(cfg.copy(USE_MINI_MASK=False)) > total(cfg) + 0.5 * GiB
    assert total(cfg.copy(BACKBONE="resnet50")) < total(cfg)
    assert total(cfg.copy(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=512)) < 0.5 * total(cfg)
    # mixed_precision=None follows the config on the given devices
    assert memory.estimate_memory(cfg, devices=[T4]).policy == "mixed_float16"
    assert memory.estimate_memory(cfg, devices=[P100]).policy is None


def test_estimate_is_in_the_range_of_published_figures():
    # matterport: the defaults fit a 12 GB GPU; maskrcnn-benchmark measured 7.9 GB for
    # R-101-FPN with res2 frozen and 2 images of 800x1333 (see colabrcnn/memory/estimate.py's notes).
    assert 8 * GiB < total(matterport()) < 11.5 * GiB
    bench_like = total(matterport(TRAIN_ROIS_PER_IMAGE=128), "3+")
    assert 0.8 * 7.9 * GiB < bench_like < 1.2 * 7.9 * GiB


def test_layer_presets_match_train():
    from colabrcnn.train import LAYER_REGEX
    assert memory.LAYER_PRESETS == LAYER_REGEX


def test_estimate_text_and_bad_layers():
    text = str(memory.estimate_memory(matterport(), "heads"))
    assert "backbone" in text and "GiB" in text
    with pytest.raises(ConfigError, match="layers"):
        memory.estimate_memory(matterport(), "res[")


# ------------------------------------------------------------ memory strings
@pytest.mark.parametrize("text, expected", [
    ("15GB", 15 * GiB), ("16 GiB", 16 * GiB), ("15.5 gb", int(15.5 * GiB)),
    ("24000MiB", 24000 * 2 ** 20), (16 * GiB, 16 * GiB), ("12G", 12 * GiB),
])
def test_parse_memory(text, expected):
    assert memory.parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["lots", "15 parsecs", 15, True, ""])
def test_parse_memory_rejects(bad):
    with pytest.raises(ConfigError):
        memory.parse_memory(bad)


# ---------------------------------------------------------------- fit_to_gpu
def test_fit_matterport_default_on_15gb():
    cfg, lines = memory.fit_to_gpu(matterport(), "all", memory="15GB", gpu="T4",
                                   measure=False, verbose=False)
    assert memory.estimate_memory(cfg, "all", devices=["T4"]).total <= 0.9 * 15 * GiB
    assert in_lever_order(levers_of(lines))
    # float32 on a 15 GB card without fast float16 fits as well
    cfg, lines = memory.fit_to_gpu(matterport(), "all", memory="15GB", gpu="P100",
                                   measure=False, verbose=False)
    assert total(cfg) <= 0.9 * 15 * GiB


def test_fit_leaves_a_fitting_config_unchanged(capsys):
    base = matterport()
    cfg, lines = memory.fit_to_gpu(base, "all", memory="15GB", gpu="T4", measure=False)
    assert cfg is base
    assert len(lines) == 1 and "nothing changed" in lines[0]
    assert "mixed_float16 through MIXED_PRECISION='auto'" in lines[0]
    assert "nothing changed" in capsys.readouterr().out


def test_fit_applies_every_lever_in_order_when_memory_is_tight():
    base = matterport(MIXED_PRECISION=False, USE_MINI_MASK=False)
    cfg, lines = memory.fit_to_gpu(base, "all", memory="2GB", gpu="T4", measure=False,
                                   verbose=False)
    names = levers_of(lines)
    assert names[:4] == ["mixed_precision", "remat", "mini_mask", "rois"]
    assert "batch" in names and "crop" in names
    assert in_lever_order(names)
    assert cfg.MIXED_PRECISION is True and cfg.REMAT and cfg.USE_MINI_MASK
    assert cfg.IMAGES_PER_GPU == 1 and cfg.GRADIENT_ACCUMULATION_STEPS == 2
    assert cfg.IMAGE_RESIZE_MODE == "crop" and cfg.IMAGE_MIN_DIM == 512
    assert memory.estimate_memory(cfg, "all", devices=["T4"]).total <= 0.87 * 2 * GiB
    assert lines[-1].startswith("Fits")
    # every change line says what it costs
    assert all("Cost:" in line for line in lines[:-1])


def test_fit_on_a_gpu_without_fast_float16_skips_mixed_precision():
    cfg, lines = memory.fit_to_gpu(matterport(), "all", memory="6GB", gpu=P100,
                                   measure=False, verbose=False)
    assert "mixed_precision" not in levers_of(lines)
    assert cfg.MIXED_PRECISION == "auto"
    assert total(cfg) <= 0.87 * 6 * GiB


def test_fit_skips_levers_that_save_nothing():
    # with mini-masks on, fewer GT slots save almost nothing: not worth the instances
    _, lines = memory.fit_to_gpu(matterport(), "all", memory="3GB", gpu="T4",
                                 measure=False, verbose=False)
    assert "max_gt" not in levers_of(lines)
    # without mini-masks they matter
    base = matterport(USE_MINI_MASK=False)
    assert total(base.copy(MAX_GT_INSTANCES=50)) < total(base) - 0.3 * GiB


def test_fit_skips_remat_where_the_model_cannot_use_it():
    cfg, lines = memory.fit_to_gpu(matterport(TRAIN_BN=True), "all", memory="4GB",
                                   gpu="T4", measure=False, verbose=False)
    assert not cfg.REMAT
    assert "remat" not in levers_of(lines)
    assert any(line.startswith("REMAT skipped") and "TRAIN_BN" in line for line in lines)
    assert in_lever_order(levers_of(lines))
    assert memory.remat_unavailable(matterport()) is None


def test_fit_heads_only_needs_no_remat():
    cfg, lines = memory.fit_to_gpu(matterport(MIXED_PRECISION=False), "heads",
                                   memory="3GB", gpu=P100, measure=False, verbose=False)
    assert not cfg.REMAT and "remat" not in levers_of(lines)


def test_fit_impossible_raises_with_the_smallest_estimate():
    with pytest.raises(GPUMemoryError) as info:
        memory.fit_to_gpu(matterport(), "all", memory="1GB", gpu="T4", measure=False,
                          verbose=False)
    text = str(info.value)
    assert "No setting fits" in text and "still needs an estimated" in text
    assert re.search(r"\d+\.\d GiB", text)
    assert any("heads" in s for s in info.value.suggestions)


def test_fit_without_gpu_or_memory_asks_for_memory(no_gpu):
    with pytest.raises(ConfigError, match="memory="):
        memory.fit_to_gpu(matterport(), measure=False, verbose=False)


def test_fit_with_gpu_name_only_uses_its_memory(no_gpu):
    cfg, lines = memory.fit_to_gpu(matterport(), gpu="T4", measure=False, verbose=False)
    assert "of 15.0 GiB" in lines[-1]


def test_fit_measure_true_without_gpu_trusts_the_estimate(no_gpu, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("no trial steps without a GPU")
    monkeypatch.setattr(probe, "measure_training_step", boom)
    cfg, lines = memory.fit_to_gpu(matterport(), memory="15GB", gpu="T4", measure=True,
                                   verbose=False)
    assert "nothing changed" in lines[-1]


class ResourceExhaustedError(Exception):
    """Named and placed like tf.errors.ResourceExhaustedError."""


ResourceExhaustedError.__module__ = "tensorflow.python.framework.errors_impl"


def test_fit_with_fake_measurer_applies_the_next_lever_on_oom():
    calls = []

    def fake(cfg, layers):
        calls.append(cfg)
        if len(calls) == 1:
            raise ResourceExhaustedError("OOM when allocating tensor with shape[400,256,"
                                         "28,28]")
        return int(9 * GiB)

    base = matterport()
    cfg, lines = memory.fit_to_gpu(base, "all", memory="15GB", gpu="T4", measure=fake,
                                   verbose=False)
    assert len(calls) == 2 and calls[0] is base
    assert any("ran out of memory" in line for line in lines)
    assert levers_of(lines) == ["remat"]       # mixed precision was already on (auto)
    assert cfg.REMAT and calls[1] is cfg
    assert "peaked at 9.0 GiB" in lines[-1]


def test_fit_with_fake_measurer_too_close_to_the_limit():
    peaks = iter([int(14.9 * GiB), int(10 * GiB)])
    cfg, lines = memory.fit_to_gpu(matterport(), "all", memory="15GB", gpu="T4",
                                   measure=lambda c, layers: next(peaks), verbose=False)
    assert any("too close" in line for line in lines)
    assert cfg.REMAT


def test_fit_with_fake_measurer_reraises_other_errors():
    def broken(cfg, layers):
        raise ValueError("a bug, not memory")
    with pytest.raises(ValueError, match="a bug"):
        memory.fit_to_gpu(matterport(), memory="15GB", gpu="T4", measure=broken,
                          verbose=False)


# ---------------------------------------------------------------- OOM helpers
def _fake(name, module, base=Exception):
    cls = type(name, (base,), {})
    cls.__module__ = module
    return cls


def test_is_oom_error_recognises_backends_without_importing_them():
    tf_oom = _fake("ResourceExhaustedError", "tensorflow.python.framework.errors_impl")
    torch_oom = _fake("OutOfMemoryError", "torch.cuda", RuntimeError)
    xla = _fake("XlaRuntimeError", "jaxlib.xla_extension", RuntimeError)
    jax_rt = _fake("JaxRuntimeError", "jax.errors", RuntimeError)
    assert memory.is_oom_error(tf_oom("OOM when allocating tensor"))
    assert memory.is_oom_error(torch_oom("CUDA out of memory. Tried to allocate 2 GiB"))
    assert memory.is_oom_error(xla("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                   "allocate 1.20GiB"))
    assert memory.is_oom_error(jax_rt("RESOURCE_EXHAUSTED: ..."))
    assert not memory.is_oom_error(xla("INVALID_ARGUMENT: shapes do not match"))
    assert memory.is_oom_error(RuntimeError("CUDA error: out of memory"))
    assert memory.is_oom_error(MemoryError())
    assert memory.is_oom_error(GPUMemoryError("x"))
    assert not memory.is_oom_error(ValueError("bad value"))
    assert not memory.is_oom_error(ValueError("out of memory?"))   # not a runtime error
    assert not memory.is_oom_error(KeyError("RESOURCE_EXHAUSTED"))


def test_is_oom_error_follows_the_chain():
    tf_oom = _fake("ResourceExhaustedError", "tensorflow.python.framework.errors_impl")
    try:
        try:
            raise tf_oom("OOM")
        except Exception as inner:
            raise Exception("wrapped by a callback") from inner
    except Exception as outer:
        assert memory.is_oom_error(outer)


def test_oom_advice_in_lever_order_and_skips_used_levers():
    advice = memory.oom_advice(matterport(MIXED_PRECISION=False), "all", devices=[T4])
    first = [a.split(" ")[0] for a in advice]
    assert first[:3] == ["MIXED_PRECISION", "REMAT", "TRAIN_ROIS_PER_IMAGE"]
    assert re.search(r"about -\d+%", advice[0])
    assert any(a.startswith("IMAGES_PER_GPU = 1 with GRADIENT_ACCUMULATION_STEPS = 2")
               for a in advice)
    assert any("layers='heads'" in a for a in advice)
    used = matterport(MIXED_PRECISION=True, REMAT=True, TRAIN_ROIS_PER_IMAGE=64,
                      IMAGES_PER_GPU=1)
    advice = memory.oom_advice(used, "all", devices=[T4])
    text = "\n".join(advice)
    for lever in ("MIXED_PRECISION", "REMAT", "TRAIN_ROIS_PER_IMAGE", "IMAGES_PER_GPU"):
        assert not any(a.startswith(lever) for a in advice), lever
    assert advice[0].startswith("IMAGE_RESIZE_MODE = 'crop'")
    assert "BACKBONE = 'resnet50'" in text
    heads = memory.oom_advice(used, "heads", devices=[T4])
    assert not any("layers='heads'" in a for a in heads)


def test_oom_advice_on_p100_mentions_mixed_precision_without_speed():
    advice = memory.oom_advice(matterport(), "all", devices=[P100])
    assert not advice[0].startswith("MIXED_PRECISION")
    assert any(a.startswith("MIXED_PRECISION = True: works on") for a in advice)


def test_raise_gpu_memory_error_chains(monkeypatch):
    monkeypatch.setattr(hardware, "local_devices", lambda refresh=False: [dict(T4), CPU])
    original = RuntimeError("CUDA out of memory")
    with pytest.raises(GPUMemoryError) as info:
        memory.raise_gpu_memory_error(original, matterport(), "all")
    assert info.value.__cause__ is original
    assert info.value.suggestions
    assert "Tesla T4" in str(info.value) and "Try, in this order" in str(info.value)


def test_reduced_config_halves_batch_and_doubles_accumulation():
    new = memory.reduced_config(matterport(), devices=[T4])
    assert (new.IMAGES_PER_GPU, new.GRADIENT_ACCUMULATION_STEPS) == (1, 2)
    new = memory.reduced_config(matterport(IMAGES_PER_GPU=4, GRADIENT_ACCUMULATION_STEPS=2),
                                devices=[T4])
    assert (new.IMAGES_PER_GPU, new.GRADIENT_ACCUMULATION_STEPS) == (2, 4)
    new = memory.reduced_config(matterport(IMAGES_PER_GPU=3), devices=[T4])
    assert (new.IMAGES_PER_GPU, new.GRADIENT_ACCUMULATION_STEPS) == (1, 3)


def test_reduced_config_at_one_image_takes_the_next_lever():
    cfg = matterport(IMAGES_PER_GPU=1, MIXED_PRECISION=False)
    new, line = memory.reduced_config(cfg, devices=[T4], explain=True)
    assert new.MIXED_PRECISION is True and line.startswith("MIXED_PRECISION")
    new = memory.reduced_config(cfg.copy(MIXED_PRECISION=True), devices=[T4])
    assert new.REMAT
    smallest = matterport(IMAGES_PER_GPU=1, REMAT=True, TRAIN_ROIS_PER_IMAGE=64,
                          MAX_GT_INSTANCES=35, BACKBONE="resnet50",
                          IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=1024,
                          MIXED_PRECISION=True)
    with pytest.raises(GPUMemoryError):
        memory.reduced_config(smallest, devices=[T4])


# -------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", sorted(memory.GPU_PRESETS))
def test_presets_consistent_with_fit_to_gpu(name):
    preset = memory.GPU_PRESETS[name]
    assert memory.derive_preset(name) == preset["overrides"]
    cfg = matterport(**preset["overrides"])
    est = memory.estimate_memory(cfg, "all", devices=[name]).total
    assert est <= memory.DEFAULT_TARGET * preset["memory_bytes"]
    assert preset["note"]


def test_preset_for_gpu_by_nvidia_smi_name():
    assert memory.preset_for_gpu("Tesla T4")["overrides"] == {"MIXED_PRECISION": True}
    assert memory.preset_for_gpu("Tesla P100-PCIE-16GB")["gpu"] == "P100"
    assert memory.preset_for_gpu("NVIDIA A100-SXM4-40GB")["gpu"] == "A100"
    assert memory.preset_for_gpu("NVIDIA L4")["estimate_bytes"] > GiB
    with pytest.raises(ConfigError, match="fit_to_gpu"):
        memory.preset_for_gpu("Tesla K80")
