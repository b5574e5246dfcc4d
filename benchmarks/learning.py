"""Does the model learn real annotated images from random weights? (not a test)

    python benchmarks/learning.py --minutes 5                  # every dataset, library default
    python benchmarks/learning.py --data nuclei --recipe sgd-frozen --minutes 5
    python benchmarks/learning.py --steps 300 --eval-every 50 --png curve.png

Trains a small Mask R-CNN (ResNet-18, every layer) from random weights on real,
human-annotated instance masks, for a fixed wall-clock budget (--minutes, the model's
training time only: evaluations and compilation are not counted) or a fixed number of
steps, and prints the held-out COCO mask AP / AP50 (pycocotools through
colabrcnn.evaluate) against the number of steps. Writes the curves to a PNG.

Datasets (nothing is downloaded; both ship in files at hand):
  coins   datasets/coins: two photographs of Greek coins, 12 coins each, annotated by
          hand-checked outlines. Trained on the top picture, held out: the bottom one.
          Images are 384 px wide, resized to 192 (coins about 20 px across).
  nuclei  datasets/nuclei: the 512 x 512 fluorescence image of nuclei with its
          human-annotated instance mask (125 nuclei) from the 2018 Data Science Bowl
          (Caicedo et al., Nature Methods 2019), as the `stardist` wheel ships it
          (see datasets/README.md). Cut into 16 tiles of 128 px: 12 to train, the 4 of
          the bottom row held out (instances cut by a tile edge are clipped, fragments
          under 15 px dropped).

Recipes (--recipe, several allowed):
  default      MaskRCNN.train() with no optimizer and Config's defaults: what a user
               gets with the README's calls
  matterport   the defaults before issue 16: TRAIN_BN False, SGD momentum 0.9 at
               LEARNING_RATE (0.001)
  sgd-frozen   the same at LR 0.01 (the run of issue 16)
  adam-demo    the shapes demo's: TRAIN_BN True, Adam 1e-3 with a cosine decay
  NAME:K=V,... any of the above with Config settings changed, e.g.
               "default:LEARNING_RATE=0.002" or "sgd-frozen:TRAIN_BN=True"; two
               keys are the benchmark's own: BN_MOMENTUM=m (every BatchNorm) and
               RESIDUAL_GAMMA=g (the initial gamma of each residual branch's last
               BatchNorm, bn*_branch2c / bn*_branch2b: 0 starts every block as identity)

The figures depend on the machine's load: the header line prints the load average.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------- datasets
def array_dataset(samples, class_name):
    """A matterport Dataset over in-memory (image H x W x 3 uint8, label map H x W) pairs;
    each positive label of the map is one instance of ``class_name``."""
    import numpy as np

    from colabrcnn.data import Dataset

    class ArrayDataset(Dataset):
        def load_mask(self, image_id):
            labels = self.image_info[image_id]["labels"]
            ids = [i for i in np.unique(labels) if i > 0]
            masks = np.stack([labels == i for i in ids], axis=-1) if ids else \
                np.zeros(labels.shape + (0,), bool)
            return masks, np.ones(len(ids), np.int32)

    ds = ArrayDataset()
    ds.add_class("real", 1, class_name)
    for k, (image, labels) in enumerate(samples):
        ds.add_image("real", image_id=k, path=None, image=image, labels=labels,
                     height=image.shape[0], width=image.shape[1])
    return ds.prepare()


def _labels_from_masks(masks):
    """H x W x N bool -> H x W int label map (later instances win on overlaps)."""
    import numpy as np
    labels = np.zeros(masks.shape[:2], np.int32)
    for i in range(masks.shape[-1]):
        labels[masks[..., i]] = i + 1
    return labels


def coins():
    """(train, held_out) from datasets/coins: the top picture trains, the bottom is held out."""
    from colabrcnn.data import load
    ds = load(os.path.join(ROOT, "datasets", "coins"))
    by_name = {os.path.basename(info["path"]): i for i, info in
               zip(ds.image_ids, ds.image_info)}
    parts = []
    for name in ("coins_top.png", "coins_bottom.jpg"):
        i = by_name[name]
        parts.append(array_dataset([(ds.load_image(i), _labels_from_masks(ds.load_mask(i)[0]))],
                                   "coin"))
    return parts[0], parts[1]


def nuclei(tile=128, min_area=15):
    """(train, held_out): 16 tiles of the DSB 2018 nuclei image; the bottom row is held out."""
    import numpy as np
    from PIL import Image
    from skimage.measure import label as connected

    folder = os.path.join(ROOT, "datasets", "nuclei")
    image = np.asarray(Image.open(os.path.join(folder, "nuclei.png")), np.float64)
    mask = np.asarray(Image.open(os.path.join(folder, "nuclei_labels.png")), np.int32)
    lo, hi = np.percentile(image, (1, 99.8))  # dim fluorescence -> full 8-bit contrast
    gray = np.clip((image - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    rgb = np.stack([gray] * 3, axis=-1)
    train, held = [], []
    rows, cols = image.shape[0] // tile, image.shape[1] // tile
    for r in range(rows):
        for c in range(cols):
            win = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
            labels = np.zeros((tile, tile), np.int32)
            n = 0
            for i in np.unique(mask[win]):
                if i == 0:
                    continue
                # A nucleus cut by the tile edge may fall apart: keep its largest piece.
                pieces = connected(mask[win] == i)
                sizes = np.bincount(pieces.ravel())[1:]
                if sizes.max() < min_area:
                    continue
                n += 1
                labels[pieces == 1 + int(np.argmax(sizes))] = n
            (held if r == rows - 1 else train).append((rgb[win].copy(), labels))
    return array_dataset(train, "nucleus"), array_dataset(held, "nucleus")


DATASETS = {"coins": coins, "nuclei": nuclei}


def make_config(data, overrides, backbone=None, size=None):
    from colabrcnn.demo import ShapesConfig
    settings = dict(NAME=f"learn_{data}", NUM_CLASSES=2, MAX_GT_INSTANCES=32,
                    DETECTION_MAX_INSTANCES=50, DETECTION_MIN_CONFIDENCE=0.05,
                    STEPS_PER_EPOCH=25, VALIDATION_STEPS=1, CHECKPOINT_EVERY_MINUTES=None,
                    CHECKPOINT_KEEP=1, TRAIN_BN=library_default("TRAIN_BN"))
    if data == "coins":
        settings.update(IMAGE_MIN_DIM=192, IMAGE_MAX_DIM=192)
    if size:
        settings.update(IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size)
    if backbone:
        settings["BACKBONE"] = backbone
    settings.update(overrides)
    return ShapesConfig(**settings)


def library_default(name):
    """Config's own default of a setting (the demo's ShapesConfig changes some)."""
    from colabrcnn import Config
    return getattr(Config, name)


# -------------------------------------------------------------------------- recipes
def parse_recipe(text):
    """'name:K=V,K=V' -> (name, {K: value})."""
    import ast
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return name, overrides


def recipe_settings(name):
    """Config settings and (learning rate, optimizer factory or None) of a named recipe."""
    import keras
    if name == "default":
        return {}, None, None
    if name == "sgd-frozen":
        return {"TRAIN_BN": False, "OPTIMIZER": "sgd"}, 0.01, None
    if name == "matterport":
        return {"TRAIN_BN": False, "OPTIMIZER": "sgd"}, None, None
    if name == "adam-demo":
        def adam(config, total_steps):
            schedule = keras.optimizers.schedules.CosineDecay(1e-3, total_steps, alpha=0.05)
            return keras.optimizers.Adam(schedule, clipnorm=config.GRADIENT_CLIP_NORM)
        return {"TRAIN_BN": True}, 1e-3, adam
    raise SystemExit(f"unknown recipe {name!r}: default, matterport, sgd-frozen, adam-demo")


# ------------------------------------------------------------------------- training
def held_out_metrics(model, held):
    from colabrcnn import evaluate
    m = evaluate.coco_metrics(model, held, out_json=False, verbose=0)
    return {"mask_AP": m["segm"]["AP"] or 0.0, "mask_AP50": m["segm"]["AP50"] or 0.0,
            "box_AP50": m["bbox"]["AP50"] or 0.0, "detections": m["num_predictions"]}


def run(data, recipe, steps, eval_every, seed, out_dir, verbose, backbone=None, size=None,
        eval_at_start=True, train_verbose=0):
    """Train one recipe on one dataset; returns the list of evaluation points (the
    untrained model's first unless not ``eval_at_start``). train_verbose: train()'s
    verbose (1: progress bar and the recipe's log line)."""
    import keras

    from colabrcnn import MaskRCNN

    name, overrides = parse_recipe(recipe)
    settings, lr, make_optimizer = recipe_settings(name)
    settings.update(overrides)
    bn_momentum = settings.pop("BN_MOMENTUM", None)
    residual_gamma = settings.pop("RESIDUAL_GAMMA", None)
    settings["STEPS_PER_EPOCH"] = eval_every
    config = make_config(data, settings, backbone, size)
    keras.utils.set_random_seed(seed)
    train, held = DATASETS[data]()
    model = MaskRCNN("training", config, model_dir=out_dir)
    if bn_momentum is not None:
        for layer in _all_layers(model.keras_model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    if residual_gamma is not None:
        set_residual_gamma(model.keras_model, float(residual_gamma))
    epochs = max(1, round(steps / eval_every))
    optimizer = make_optimizer(config, epochs * eval_every) if make_optimizer else None
    points = [dict(step=0, train_seconds=0.0, **held_out_metrics(model, held))] \
        if eval_at_start else []
    clock = {"train": 0.0}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()
            self.first = None

        def on_train_batch_end(self, batch, logs=None):
            if self.first is None:  # the first batch of a fit includes compilation
                self.first = time.perf_counter() - self.t0

        def on_epoch_end(self, epoch, logs=None):
            spent = time.perf_counter() - self.t0
            if epoch == 0 and eval_every > 1:  # replace the compiling step by a typical one
                spent = (spent - self.first) * eval_every / (eval_every - 1)
            clock["train"] += spent
            point = dict(step=(epoch + 1) * eval_every, train_seconds=round(clock["train"], 1),
                         loss=float(logs.get("loss", float("nan"))),
                         **held_out_metrics(model, held))
            points.append(point)
            if verbose:
                print(f"  {data:7s} {recipe:24s} step {point['step']:5d} "
                      f"{point['train_seconds']:7.1f}s  loss {point['loss']:.3f}  "
                      f"mask AP {point['mask_AP']:.3f}  AP50 {point['mask_AP50']:.3f}  "
                      f"box AP50 {point['box_AP50']:.3f}  det {point['detections']}", flush=True)
            if budget_s is not None and clock["train"] >= budget_s:
                self.model.stop_training = True

    budget_s = RUN_BUDGET.get("seconds")
    model.train(train, None, learning_rate=lr or config.LEARNING_RATE, epochs=epochs,
                layers="all", optimizer=optimizer, resume=False, seed=seed,
                verbose=train_verbose, custom_callbacks=[Probe()])
    return points


RUN_BUDGET = {}


def set_residual_gamma(keras_model, value):
    """Set the gamma of the last BatchNorm of every residual branch (bottleneck 2c,
    basic block 2b) to ``value``; returns how many layers were set."""
    import re

    import numpy as np
    last = re.compile(r"bn\d+[a-z]+_branch2c" if any(
        l.name.endswith("_branch2c") for l in _all_layers(keras_model))
        else r"bn\d+[a-z]+_branch2b")
    n = 0
    for layer in _all_layers(keras_model):
        if last.fullmatch(layer.name):
            layer.gamma.assign(np.full(layer.gamma.shape, value, "float32"))
            n += 1
    return n


def _all_layers(model):
    for layer in model.layers:
        yield layer
        for sub in getattr(layer, "layers", None) or []:
            yield from _all_layers(sub) if hasattr(sub, "layers") else [sub]


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datas = sorted({d for d, _ in results})
    fig, axes = plt.subplots(1, len(datas), figsize=(5 * len(datas), 3.6), squeeze=False)
    for ax, data in zip(axes[0], datas):
        for (d, recipe), points in results.items():
            if d != data:
                continue
            steps = [p["step"] for p in points]
            ax.plot(steps, [p["mask_AP50"] for p in points], "o-", label=f"{recipe} AP50")
            ax.plot(steps, [p["mask_AP"] for p in points], "--", alpha=0.6,
                    label=f"{recipe} AP")
        ax.set_title(f"{data}: held-out mask AP from random weights")
        ax.set_xlabel("training steps (2 images each)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    p.add_argument("--recipe", nargs="+", default=["default"])
    p.add_argument("--minutes", type=float, default=None,
                   help="training-time budget per run (evaluation not counted)")
    p.add_argument("--steps", type=int, default=2000,
                   help="steps per run (the LR schedule's length); --minutes stops earlier")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default=None, help="default: resnet18 (CPU-sized)")
    p.add_argument("--size", type=int, default=None,
                   help="IMAGE_MAX_DIM (default: 192 for coins, 128 for nuclei tiles)")
    p.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                   default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    p.add_argument("--png", default="learning.png")
    p.add_argument("--json", default=None, help="also write every point as JSON")
    p.add_argument("--out-dir", default="/tmp/colabrcnn-learning")
    args = p.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.minutes is not None:
        RUN_BUDGET["seconds"] = args.minutes * 60
    import keras

    load = os.getloadavg()
    print(f"backend={keras.backend.backend()} cpus={os.cpu_count()} "
          f"load={load[0]:.1f},{load[1]:.1f} budget={args.minutes} min steps<={args.steps} "
          f"seed={args.seed}", flush=True)
    results = {}
    for data in args.data:
        for recipe in args.recipe:
            results[(data, recipe)] = run(data, recipe, args.steps, args.eval_every,
                                          args.seed, args.out_dir, verbose=1,
                                          backbone=args.backbone, size=args.size)
    print("\nheld-out mask AP / AP50 against steps (training seconds):")
    for (data, recipe), points in results.items():
        row = "  ".join(f"{q['step']}:{q['mask_AP']:.2f}/{q['mask_AP50']:.2f}"
                        for q in points)
        print(f"{data:7s} {recipe:24s} {row}")
        best = max(points, key=lambda q: q["mask_AP50"])
        print(f"{'':32s} best AP50 {best['mask_AP50']:.3f} (AP {best['mask_AP']:.3f}) at "
              f"step {best['step']}, {best['train_seconds']:.0f} s of training")
    plot(results, args.png)
    print(f"curve: {args.png}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{d}|{r}": pts for (d, r), pts in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
