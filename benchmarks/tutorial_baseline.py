"""The PyTorch transfer-learning tutorial's two methods, on EfficientNet-Lite0, for comparison.

Reproduced as the tutorial writes them: torchvision ImageFolder, RandomResizedCrop(224) +
flip for training, Resize(256) + CenterCrop(224) for validation, batch 4, cross-entropy,
SGD(lr=0.001, momentum=0.9), StepLR(step_size=7, gamma=0.1), 25 epochs, the best
validation epoch kept. ``fixed``: the backbone is frozen and re-run every epoch, only the
new classifier learns ("ConvNet as fixed feature extractor"); ``finetune``: every
parameter learns. Only the backbone (Lite0, with its own normalisation) and the number
of DataLoader workers (0, the fastest on 2 cores) differ from the tutorial.

``python benchmarks/tutorial_baseline.py fixed|finetune EPOCHS`` prints one JSON line.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch
from torch import nn
from torchvision import datasets, transforms

from benchmarks.common import HYMENOPTERA
from features.backbones import load_backbone


def main(mode: str, epochs: int) -> dict:
    torch.manual_seed(0)
    backbone = load_backbone("efficientnet_lite0")
    p = backbone.preprocessing
    tfs = {
        "train": transforms.Compose([transforms.RandomResizedCrop(p.crop_size), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), transforms.Normalize(p.mean, p.std)]),
        "val": transforms.Compose([transforms.Resize(p.resize_size), transforms.CenterCrop(p.crop_size),
                                   transforms.ToTensor(), transforms.Normalize(p.mean, p.std)]),
    }
    image_sets = {x: datasets.ImageFolder(os.path.join(HYMENOPTERA, x), tfs[x]) for x in ("train", "val")}
    loaders = {x: torch.utils.data.DataLoader(image_sets[x], batch_size=4, shuffle=True, num_workers=0)
               for x in ("train", "val")}
    model = backbone.model
    model.requires_grad_(mode == "finetune")
    model._fc = nn.Linear(model._fc.in_features, 2)
    params = model.parameters() if mode == "finetune" else model._fc.parameters()
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()

    start = time.perf_counter()
    best_acc, best_state, history, epoch_seconds = 0.0, copy.deepcopy(model.state_dict()), [], []
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        for phase in ("train", "val"):
            model.train() if phase == "train" else model.eval()
            correct = 0
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                correct += int((outputs.argmax(1) == labels).sum())
            if phase == "train":
                scheduler.step()
            else:
                acc = correct / len(image_sets["val"])
                history.append(round(acc, 4))
                if acc > best_acc:
                    best_acc, best_state = acc, copy.deepcopy(model.state_dict())
        epoch_seconds.append(time.perf_counter() - epoch_start)
    model.load_state_dict(best_state)
    return {"mode": mode, "epochs": epochs, "best_val_accuracy": best_acc, "seconds": time.perf_counter() - start,
            "epoch_seconds": epoch_seconds, "train_images": len(image_sets["train"]), "val_history": history}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
