#!/usr/bin/python3
"""Regenerates the one-cycle golden files under tests/golden/onecycle/ from PyTorch.

Run from the repository root with an interpreter that has torch (Debian's python3-torch 1.13;
a pyenv `python3` on PATH may lack it):

    /usr/bin/python3 tests/golden/make_onecycle_golden.py [--ref ../shared/reference/resnet9_ref.py]

Every file starts with one header line and then has one line per optimizer step:

    # total_steps=100 max_lr=0.01 pct_start=0.3 anneal=cos ... source=resnet9_ref.py
    <step> <lr %.10e> <beta1 %.10f>

The header lists every OneCycleOptions field, so tests/unit/train_one_cycle_test.cpp rebuilds the
schedule from the file alone. A data line holds the lr and Adam beta1 that optimizer step `step`
(0-based) uses: they are printed before opt.step(), then sched.step() moves on. That is the format
of `resnet9_ref.py onecycle TOTAL MAX_LR`. The default-option files come from that script (with the
default cos, two-phase, Adam beta1 = 0.9 options); the others call OneCycleLR directly.
"""
import argparse
import os
import subprocess
import sys
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "onecycle")

# OneCycleOptions defaults (src/train/one_cycle.h) = torch.optim.lr_scheduler.OneCycleLR defaults;
# beta1 is Adam's default betas[0], the value kept when cycle_momentum is off.
DEFAULTS = dict(max_lr=0.01, pct_start=0.3, anneal="cos", div_factor=25.0, final_div_factor=1e4,
                three_phase=False, cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                beta1=0.9)

# (file name, total_steps, max_lr) produced by resnet9_ref.py with default options.
REFERENCE_CASES = [
    ("default_t100.txt", 100, 0.01),
    ("default_t37.txt", 37, 0.003),
    ("default_t1000.txt", 1000, 0.05),
]

# (file name, total_steps, overrides of DEFAULTS) produced by OneCycleLR directly.
DIRECT_CASES = [
    ("three_phase_t200.txt", 200, dict(max_lr=0.02, three_phase=True)),
    ("linear_t150.txt", 150, dict(max_lr=0.004, anneal="linear")),
    ("three_phase_linear_t64.txt", 64, dict(max_lr=0.1, anneal="linear", three_phase=True)),
    ("custom_t300.txt", 300, dict(max_lr=0.03, pct_start=0.25, div_factor=10.0,
                                  final_div_factor=100.0, base_momentum=0.8, max_momentum=0.9)),
    ("no_momentum_t50.txt", 50, dict(cycle_momentum=False, beta1=0.8)),
    # Warm-up shorter than one step (pct_start * total_steps < 1): step 0 is already annealing.
    ("tiny_t3.txt", 3, dict()),
    ("tiny_t1.txt", 1, dict()),
    # three_phase with pct_start > 0.5: PyTorch never reaches phase 3 nor min_lr.
    ("three_phase_pct07_t20.txt", 20, dict(pct_start=0.7, three_phase=True)),
]


def header(total, options, source):
    def fmt(v):
        return str(int(v)) if isinstance(v, bool) else repr(v) if isinstance(v, float) else v
    fields = " ".join(f"{k}={fmt(v)}" for k, v in options.items())
    return f"# total_steps={total} {fields} source={source}\n"


def direct_lines(total, o):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], o["max_lr"], betas=(o["beta1"], 0.999))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=o["max_lr"], total_steps=total, pct_start=o["pct_start"],
        anneal_strategy=o["anneal"], cycle_momentum=o["cycle_momentum"],
        base_momentum=o["base_momentum"], max_momentum=o["max_momentum"],
        div_factor=o["div_factor"], final_div_factor=o["final_div_factor"],
        three_phase=o["three_phase"])
    lines = []
    for s in range(total):
        g = opt.param_groups[0]
        lines.append(f"{s} {g['lr']:.10e} {g['betas'][0]:.10f}\n")
        opt.step()
        sched.step()
    return "".join(lines)


def write(name, text):
    with open(os.path.join(OUT_DIR, name), "w") as f:
        f.write(text)
    print(f"wrote {name}: {text.count(chr(10)) - 1} steps")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_ref = os.path.join("..", "shared", "reference", "resnet9_ref.py")
    parser.add_argument("--ref", default=default_ref,
                        help="path of resnet9_ref.py (default relative to the repository root)")
    args = parser.parse_args()
    if not os.path.isfile(args.ref):
        sys.exit(f"{args.ref} not found: run from the repository root or pass --ref")
    warnings.filterwarnings("ignore")
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"torch {torch.__version__}")
    for name, total, max_lr in REFERENCE_CASES:
        out = subprocess.run([sys.executable, args.ref, "onecycle", str(total), str(max_lr)],
                             check=True, capture_output=True, text=True).stdout
        options = dict(DEFAULTS, max_lr=max_lr)
        write(name, header(total, options, "resnet9_ref.py") + out)
    for name, total, overrides in DIRECT_CASES:
        options = dict(DEFAULTS, **overrides)
        write(name, header(total, options, "OneCycleLR") + direct_lines(total, options))


if __name__ == "__main__":
    main()
