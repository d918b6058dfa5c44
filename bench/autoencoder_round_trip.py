"""Does the prior's autoencoder keep steel? Round trip of the NEU validation images, judged twice.

- by the shipped steel feature network (which the decoder stage also uses as its perceptual network);
- by an independent judge: the few-shot protocol's small CNN trained from scratch on the whole training pool
  (64 px, never used in training the autoencoder), so a decoder that only learnt to please the feature network
  does not pass unseen.

    python -m bench.autoencoder_round_trip --neu ../shared/data/neu [--model engine/weights/steel-prior] [--seeds 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import AutoencoderKL

from engine.data import load_rgb, read_neu, split_neu, to_square_pixels
from engine.evaluation.features import image_to_array
from engine.evaluation.recognition import RECOGNITION_SIZE, train_recognizer
from engine.generation.pipeline import resolve_model
from engine.training.decoder import round_trip_recognition
from engine.training.pretrain import round_trip


def decoded_pixels(vae: AutoencoderKL, pixels: np.ndarray) -> np.ndarray:
    """The autoencoder round trip of uint8 N×H×W×3 images, as uint8."""
    return np.concatenate(
        [((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy() for _, decoded in round_trip(vae, pixels)]
    )


def small(pixels: np.ndarray) -> torch.Tensor:
    from PIL import Image

    arrays = [image_to_array(Image.fromarray(p), RECOGNITION_SIZE) for p in pixels]
    return torch.from_numpy(np.stack(arrays)).float().div_(255.0).unsqueeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neu", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seeds", type=int, default=3, help="Independent judges trained (mean over them).")
    args = parser.parse_args()
    model = resolve_model(args.model)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", dtype=torch.float32).eval()
    resolution = vae.config.sample_size
    pool, val = split_neu(read_neu(args.neu))
    classes = sorted({item.class_name for item in pool})
    pool_pixels = np.stack([to_square_pixels(load_rgb(item.path), resolution) for item in pool])
    val_pixels = np.stack([to_square_pixels(load_rgb(item.path), resolution) for item in val])
    val_labels = [item.class_name for item in val]
    decoded = decoded_pixels(vae, val_pixels)
    l1 = float(np.abs(decoded.astype(np.float32) - val_pixels.astype(np.float32)).mean() / 127.5)
    by_features = round_trip_recognition(vae, val_pixels, val_labels)
    y_pool = torch.tensor([classes.index(item.class_name) for item in pool])
    y_val = torch.tensor([classes.index(c) for c in val_labels])
    judged: dict[str, list[list[float]]] = {"original": [], "round trip": []}
    for seed in range(args.seeds):
        judge = train_recognizer(small(pool_pixels), y_pool, len(classes), 600, 64, seed)
        with torch.no_grad():
            for name, images in (("original", val_pixels), ("round trip", decoded)):
                predicted = judge(small(images)).argmax(1)
                judged[name].append([float((predicted[y_val == i] == i).float().mean()) for i in range(len(classes))])
    print(f"model: {model}\nround-trip L1 on the validation split ([-1, 1] scale): {l1:.4f}")
    print(f"{'class':<18}{'feature net':>12}{'judge: original':>17}{'judge: round trip':>19}")
    for i, name in enumerate(classes):
        original = np.mean([run[i] for run in judged["original"]])
        trip = np.mean([run[i] for run in judged["round trip"]])
        print(f"{name:<18}{by_features[name]:>12.3f}{original:>17.3f}{trip:>19.3f}")
    print(f"{'mean':<18}{np.mean(list(by_features.values())):>12.3f}"
          f"{np.mean(judged['original']):>17.3f}{np.mean(judged['round trip']):>19.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
