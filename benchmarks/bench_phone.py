"""Section on phone photos: 12 MP copies of hymenoptera, stored sideways with an EXIF orientation tag."""

from __future__ import annotations

import json
import os

import numpy as np

from PIL import Image

from benchmarks.bench_extract import full_path
from benchmarks.common import HYMENOPTERA, head_val_accuracy, run_measured
from features.images import EXIF_ORIENTATION, load_rgb

PHONE_SIZE = (4032, 3024)  # 12 MP, landscape as the sensor stores it


def _phone_copy(src: str, dst: str) -> int:
    """Upscale ``src`` to 12 MP, store it turned a quarter with Orientation 6 (as a phone held upright does)."""
    img = load_rgb(src)
    size = PHONE_SIZE if img.width >= img.height else PHONE_SIZE[::-1]
    big = img.resize(size, Image.Resampling.BICUBIC).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    big.save(dst, format="JPEG", quality=92, exif=exif)
    return os.path.getsize(dst)


def _datasets(out_dir: str, per_class: int | None) -> tuple[str, str, float]:
    """Phone copies and a matching tree of links to the originals; returns both roots and the mean copy size in MB."""
    phone, original = os.path.join(out_dir, "phone_12mp"), os.path.join(out_dir, "phone_originals")
    sizes = []
    for split in ("train", "val"):
        names = [(cls, name) for cls in ("ants", "bees")
                 for name in sorted(os.listdir(os.path.join(HYMENOPTERA, split, cls)))[:per_class]]
        for cls, name in names:
            src = os.path.join(HYMENOPTERA, split, cls, name)
            for root in (phone, original):
                os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            dst = os.path.join(phone, split, cls, os.path.splitext(name)[0] + ".jpg")
            sizes.append(os.path.getsize(dst) if os.path.exists(dst) else _phone_copy(src, dst))
            link = os.path.join(original, split, cls, name)
            if not os.path.lexists(link):
                os.symlink(src, link)
    return phone, original, sum(sizes) / len(sizes) / 2**20


def _agreement(original_h5: str, phone_h5: str, original_head: str, phone_head: str) -> dict:
    """Val feature cosine between each original and its copy, and how many val predictions the two heads differ on."""
    from features.store import FeatureFile
    from pipeline.predict_features import head_scores

    stem = lambda p: os.path.splitext(str(p))[0]  # noqa: E731 - copies are .jpg whatever the original was
    with FeatureFile(original_h5) as fa, FeatureFile(phone_h5) as fb:
        a, b = fa.read_split("val").clean(), fb.read_split("val").clean()
    order = {stem(p): i for i, p in enumerate(b.paths)}
    B = b.features[[order[stem(p)] for p in a.paths]]
    cosine = (a.features * B).sum(1) / np.linalg.norm(a.features, axis=1) / np.linalg.norm(B, axis=1)
    differ = head_scores(original_head, a.features).argmax(1) != head_scores(phone_head, B).argmax(1)
    return {"median_cosine": float(np.median(cosine)), "min_cosine": float(cosine.min()),
            "differ": int(differ.sum()), "images": len(cosine)}


def section_phone(out_dir: str, quick: bool) -> list[str]:
    """Extraction rate on 12 MP phone copies against the originals, the bound, and the head's accuracy on both."""
    phone, original, mb = _datasets(out_dir, 12 if quick else None)
    lines = ["## 8. Phone photos: 12 MP copies of hymenoptera (efficientnet_lite0 fp32, batch 32)", "",
             f"Every hymenoptera image upscaled to 4032x3024 (bicubic), stored turned a quarter with EXIF "
             f"Orientation 6 as a phone held upright stores it, JPEG quality 92 ({mb:.2f} MB on average). "
             "Extraction applies the tag and decodes these JPEGs at 1/8 scale in the DCT domain "
             "(`Image.draft`, shorter side kept >= the resize target). Before this, the ratio below was about "
             "0.27 (4.7 against 17.4 img/s, on the AVX512-BF16 machine of sections 1-6) with full decoding and "
             "the tag ignored.", "",
             "| images | img/s (extraction loops) | command wall s | logreg val accuracy |", "|---|---|---|---|"]
    commands, rates, files, heads = [], {}, {}, {}
    for label, root in (("originals", original), ("12 MP phone copies", phone)):
        m, path, rate = full_path(out_dir, "efficientnet_lite0", "DEFAULT", "fp32", 32, data=root,
                                  name=f"phone-{os.path.basename(root)}.h5")
        heads[label] = os.path.join(out_dir, f"head-{os.path.basename(root)}")
        head = run_measured(["run_head.py", "--features", path, "--clf", "logreg", "--out", heads[label]])
        accuracy, images = head_val_accuracy(heads[label])
        rates[label], files[label] = rate, path
        commands += [m.command, head.command]
        lines.append(f"| {label} | {rate:.1f} | {m.seconds:.1f} | {accuracy:.4f} ({images} images) |")
    split = run_measured(["benchmarks/phone_split.py", phone, original, "24" if quick else "64"])
    commands.append(split.command)
    r = json.loads(split.stdout)
    forward, cores = r["forward_core_ms"], r["threads"]
    overlapped = (forward + r["original_ms"]) / (forward + r["phone_draft_ms"])
    in_turn = (forward / cores + r["original_ms"]) / (forward / cores + r["phone_draft_ms"])
    ratio = rates["12 MP phone copies"] / rates["originals"]
    same = _agreement(files["originals"], files["12 MP phone copies"], heads["originals"], heads["12 MP phone copies"])
    lines += ["", f"Ratio phone / originals: **{ratio:.2f}**.", "",
              f"The copies are other pictures, not only other files: upscaled and re-encoded, their val features "
              f"have a median cosine of {same['median_cosine']:.3f} (lowest {same['min_cosine']:.3f}) with the "
              f"originals'. The two heads (each trained on its own copies) disagree on {same['differ']} of "
              f"{same['images']} val images. Reduced-scale decoding itself stays within cosine 0.99 of a full "
              "decode of the same file (`tests/test_phone.py`).", "",
              f"Per image, one core, decode + EXIF + resize/crop/normalise ({r['images']} images): 12 MP copy "
              f"{r['phone_draft_ms']:.1f} ms with reduced-scale decoding, {r['phone_full_ms']:.1f} ms decoded in "
              f"full; original {r['original_ms']:.1f} ms. Lite0 fp32 forward pass: {r['forward_ms']:.1f} ms per "
              f"image on {cores} threads ({forward:.1f} core-ms).", "",
              f"Bound on this machine: decoding is work the forward pass's cores must also do, so the phone / "
              f"originals ratio cannot exceed (F + D_orig) / (F + D_phone) = **{overlapped:.2f}** with perfect "
              f"overlap, and ({forward / cores:.1f} + D_orig) / ({forward / cores:.1f} + D_phone) = "
              f"**{in_turn:.2f}** with decoding and the forward pass in turn (F in core-ms, D per image on one "
              "core). More cores, or a GPU for the forward pass, lift the bound.", "",
              "```"] + commands + ["```", ""]
    return lines
