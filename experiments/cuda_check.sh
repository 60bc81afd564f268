#!/bin/bash
# The GPU check of eaq.py's --device cuda path (docs/gpu.md), run from the repository root:
#
#     experiments/cuda_check.sh DATASET            # e.g. runs/datasets/2s3z-poor-...-s0.h5
#
# 1. training speed on this machine's CPU (experiments/diffusion_speed.py, one thread and every core), for comparison;
# 2. resuming on the GPU, and a GPU-trained checkpoint resumed on the CPU, each against an uninterrupted
#    GPU run, beside two identical GPU runs (GPU kernels are not bit-reproducible: that pair is the floor);
# 3. the default 9 000-step model on the GPU (λ = 0.1, seed 0), stopped after CAP seconds (default 600).
# Environment: DEV (cuda; cpu rehearses the script), N1 / N2 (steps of the resume check, 400 / 200),
# CAP, W (scratch folder, /tmp/eaq-cuda-check), CORES. No simulator is needed; JAX, if loaded, stays on the CPU.
D=${1:?usage: experiments/cuda_check.sh DATASET}
[ -f "$D" ] || { echo "error: $D: no such dataset; make one with datasets.py" >&2; exit 2; }
DEV=${DEV:-cuda}; N1=${N1:-400}; N2=${N2:-200}; CAP=${CAP:-600}; W=${W:-/tmp/eaq-cuda-check}
CORES=${CORES:-$(nproc)}
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
rm -rf "$W"; mkdir -p "$W"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
python3 -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"

run() {   # run TAG DIFFUSION-FLAGS...: eaq.py on D, its last line
    local tag=$1; shift
    python3 eaq.py --dataset "$D" "$@" > "$W/$tag.log" 2>&1
    echo "$tag (exit $?): $(tail -1 "$W/$tag.log")"
}

EAQ_TORCH_THREADS=1 python3 experiments/diffusion_speed.py --dataset "$D" --no-sampling --train-steps 30
EAQ_TORCH_THREADS=$CORES python3 experiments/diffusion_speed.py --dataset "$D" --no-sampling --train-steps 30

S="--lam 0.1 --seed 0 --scale 1 --checkpoint-every 100"
run straight_a --out "$W/a" --steps "$N1" --device "$DEV" $S
run straight_b --out "$W/b" --steps "$N1" --device "$DEV" $S
run half --out "$W/h" --steps "$N2" --device "$DEV" $S
cp -r "$W/h" "$W/hc"
run resumed --out "$W/h" --steps "$N1" --resume --device "$DEV" $S
EAQ_TORCH_THREADS=$CORES run resumed_on_cpu --out "$W/hc" --steps "$N1" --resume --device cpu $S
python3 experiments/checkpoints.py "$W/a/model.pt" "$W/b/model.pt" "two identical $DEV runs"
python3 experiments/checkpoints.py "$W/a/model.pt" "$W/h/model.pt" "uninterrupted vs resumed at $N2 on $DEV"
python3 experiments/checkpoints.py "$W/a/model.pt" "$W/hc/model.pt" "uninterrupted vs $DEV to $N2, then the CPU"

timeout "$CAP" python3 eaq.py --dataset "$D" --out "$W/full" --lam 0.1 --seed 0 --device "$DEV" \
    > "$W/full.log" 2>&1
echo "default model (exit $?; 124: stopped after $CAP s):"
tr '\r' '\n' < "$W/full.log" | grep -a -v '%|' | grep -v '^\s*$' | tail -30
tr '\r' '\n' < "$W/full.log" | grep -a '%|' | tail -1
