"""``make bench``: run every section on this machine and write BENCHMARKS.md.

``python benchmarks/run.py [--quick] [--out BENCHMARKS.md]``

``--sections audit,phone`` runs only the named sections (``extraction``, ``time``, ``heads``,
``memory``, ``precision``, ``scale``, ``audit``, ``phone``, ``onnx``, ``fold``, ``finetune``, ``sweep``,
``startup``, ``decode``, ``bf16``, ``compile``, ``rates``, ``rangetest``, ``smallsource``, ``cpuprecision``,
``raterule``, ``imagesize``, ``inputsize``, ``average``; ``precision`` needs ``extraction``)
and replaces them in the existing file, each marked with its own command, date and machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import time

from benchmarks.bench_audit import section_audit
from benchmarks.bench_compile import section_compile
from benchmarks.bench_cpu_precision import section_cpu_precision
from benchmarks.bench_decode import section_decode
from benchmarks.bench_finetune import (section_finetune, section_finetune_rates, section_range_test,
                                      section_rate_rule, section_small_source, section_weight_average)
from benchmarks.bench_extract import section_extraction, section_memory, section_precision, section_precision_evidence
from benchmarks.bench_fold import section_fold
from benchmarks.bench_image_size import section_image_size
from benchmarks.bench_input_size import section_input_size
from benchmarks.bench_onnx import section_onnx
from benchmarks.bench_phone import section_phone
from benchmarks.bench_pipeline import section_head_scaling, section_time_to_accuracy
from benchmarks.bench_scale import section_scale_out
from benchmarks.bench_startup import section_startup
from benchmarks.bench_sweep import section_sweep
from benchmarks.common import HYMENOPTERA, REPO, machine_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sizes and epochs (a smoke run, not for quoting)")
    parser.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"))
    parser.add_argument("--work", default=os.path.join(REPO, "bench_out"))
    parser.add_argument("--sections", default=None, help="comma-separated sections to run and replace in --out")
    args = parser.parse_args()
    if not os.path.isdir(HYMENOPTERA):
        raise SystemExit(f"error: the benchmarks need {HYMENOPTERA}")
    os.makedirs(args.work, exist_ok=True)
    started = time.perf_counter()
    sections = []

    def timed(title, fn, *fn_args):
        t = time.perf_counter()
        print(f"[bench] {title} ...", flush=True)
        result = fn(*fn_args)
        print(f"[bench] {title}: {time.perf_counter() - t:.0f} s", flush=True)
        return result

    wanted = set(args.sections.split(",")) if args.sections else None
    steps = [("time", "time to accuracy", section_time_to_accuracy, (args.work, args.quick)),
             ("heads", "head scaling", section_head_scaling, (args.quick,)),
             ("memory", "memory", section_memory, (args.work, args.quick)),
             ("scale", "scaling out", section_scale_out, (args.work, args.quick)),
             ("audit", "data audit", section_audit, (args.work, args.quick)),
             ("phone", "phone photos", section_phone, (args.work, args.quick)),
             ("onnx", "onnx runtime", section_onnx, (args.work, args.quick)),
             ("fold", "batchnorm folding", section_fold, (args.work, args.quick)),
             ("finetune", "fine-tuning", section_finetune, (args.work, args.quick)),
             ("sweep", "C sweep", section_sweep, (args.work, args.quick)),
             ("startup", "start-up", section_startup, (args.work, args.quick)),
             ("decode", "decode overlap", section_decode, (args.work, args.quick)),
             ("bf16", "bf16 evidence", section_precision_evidence, (args.work, args.quick)),
             ("compile", "torch.compile", section_compile, (args.work, args.quick)),
             ("rates", "fine-tuning rates", section_finetune_rates, (args.work, args.quick)),
             ("rangetest", "learning-rate range test", section_range_test, (args.work, args.quick)),
             ("smallsource", "fine-tuning small sources", section_small_source, (args.work, args.quick)),
             ("cpuprecision", "precision on this CPU", section_cpu_precision, (args.work, args.quick)),
             ("raterule", "choosing the body rate", section_rate_rule, (args.work, args.quick)),
             ("imagesize", "input size", section_image_size, (args.work, args.quick)),
             ("inputsize", "exported input size", section_input_size, (args.work, args.quick)),
             ("average", "weight average", section_weight_average, (args.work, args.quick))]
    known = {key for key, *_ in steps} | {"extraction", "precision"}
    if wanted is not None and not wanted <= known:
        raise SystemExit(f"error: unknown sections {', '.join(sorted(wanted - known))} (known: {', '.join(sorted(known))})")
    if wanted is None or wanted & {"extraction", "precision"}:
        extraction, files, rates = timed("extraction", section_extraction, args.work, args.quick)
        sections.append(extraction)
    for key, title, fn, fn_args in steps:
        if wanted is None or key in wanted:
            sections.append(timed(title, fn, *fn_args))
    if wanted is None or "precision" in wanted:
        sections.insert(4 if wanted is None else len(sections), timed("precision", section_precision, args.work, files, rates))
    if wanted is not None:
        _replace_sections(args.out, sections, f"python benchmarks/run.py --sections {args.sections}")
        print(f"updated {len(sections)} sections of {args.out}")
        return
    total = time.perf_counter() - started
    mode = "quick (smoke run: fewer sizes and epochs)" if args.quick else "full"
    header = ["# Benchmarks", "",
              f"Generated by `make bench{'-quick' if args.quick else ''}` (`python benchmarks/run.py"
              f"{' --quick' if args.quick else ''}`) on {dt.date.today().isoformat()}, {mode}, "
              f"in {total / 60:.1f} minutes. Every figure below comes from that one run, except in sections "
              "marked as measured separately (`--sections`); ratios compare measurements taken in the same run.", ""] + machine_description() + [""]
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(header + [line for section in sections for line in section]) + "\n")
    print(f"wrote {args.out} in {total / 60:.1f} min")


def _replace_sections(path: str, sections: list[list[str]], command: str) -> None:
    """Put each new section in place of the one with the same number (or at the end), marked with its run."""
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    stamp = (f"_This section was measured separately, by `{command}` on {dt.date.today().isoformat()}:_ "
             + " ".join(line.lstrip("- ") for line in machine_description()))
    for lines in sections:
        number = re.match(r"## (\d+)\.", lines[0]).group(1)
        block = "\n".join([lines[0], "", stamp] + lines[1:]) + "\n"
        pattern = re.compile(rf"^## {number}\..*?(?=^## \d+\.|\Z)", re.S | re.M)
        text = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
