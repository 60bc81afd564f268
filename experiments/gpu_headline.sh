#!/bin/bash
# The headline end to end on a GPU, and the frontier's widest settings there (docs/gpu.md), from the repository root:
#
#     experiments/gpu_headline.sh OUT        # OUT: logs, and records.tar.gz with every record made
#
# 1. `train.py --scenario 3m --quality poor --lam 0.1 --device cuda` on the shipped 3m-poor D_real (copied from
#    runs/datasets/): the diffusion model trains and samples on the GPU, the learner runs on the CPU (THREADS torch
#    threads) and evaluates in SMAX (JAX on the CPU). If SMAX cannot be loaded, eaq.py runs the diffusion stage alone.
# 2. Once D_syn is written, while the learner runs: experiments/frontier.py on the GPU (budgets in wall-clock
#    minutes) for the agent-factored U-Net 96 wide at every level (the faithful setting), at width 128, and the
#    flat one at width 80, then, if time is left, a profile of the default's training step
#    (experiments/diffusion_speed.py --profile).
# Whatever is still running DEADLINE seconds after the start is stopped, and the records are packed.
# Environment: DEV (cuda; cpu rehearses), DEADLINE (540), THREADS (8), BUDGETS ("1 2"), EPISODES (1000),
# HEADLINE_FLAGS and FRONTIER_FLAGS (extra flags of train.py and frontier.py, for a rehearsal), W (scratch folder).
O=${1:?usage: experiments/gpu_headline.sh OUT}
D=runs/datasets/3m-poor-polc453ae-eps0.05-n1463-s0.h5
[ -f "$D" ] || { echo "error: $D: no such dataset; make it with datasets.py (3m, poor, 0.03, seed 0)" >&2; exit 2; }
DEV=${DEV:-cuda}; DEADLINE=${DEADLINE:-540}; THREADS=${THREADS:-8}; BUDGETS=${BUDGETS:-1 2}
EPISODES=${EPISODES:-1000}; W=${W:-/tmp/eaq-gpu}
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu
START=$(date +%s)
left() { local s=$(( START + DEADLINE - $(date +%s) )); echo $(( s > 1 ? s : 1 )); }
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$O/main.log"; }
mkdir -p "$O"; rm -rf "$W"; mkdir -p "$W/datasets"; cp "$D" "$W/datasets/"

say "start on $(hostname), $(nproc) cores"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$O/main.log" 2>&1
python3 -c "import torch, jax, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'| jax', jax.__version__, '| numpy', numpy.__version__)" >> "$O/main.log" 2>&1
if python3 -c "import env; e = env.make_env('3m', backend='smax', n_envs=2, seed=0); e.reset()" >> "$O/main.log" 2>&1
then
    say "SMAX loads: train.py end to end"
    EAQ_TORCH_THREADS=$THREADS timeout "$(left)" python3 train.py --scenario 3m --quality poor --lam 0.1 \
        --device "$DEV" --out "$W" $HEADLINE_FLAGS > "$O/headline.log" 2>&1 &
else
    say "SMAX does not load (above): the diffusion stage alone (eaq.py)"
    EAQ_TORCH_THREADS=$THREADS timeout "$(left)" python3 eaq.py --dataset "$W/datasets/$(basename "$D")" \
        --out "$W/eaq/alone" --lam 0.1 --device "$DEV" $HEADLINE_FLAGS > "$O/headline.log" 2>&1 &
fi
HEADLINE=$!
while kill -0 $HEADLINE 2>/dev/null && ! ls "$W"/eaq/*/report.json > /dev/null 2>&1; do sleep 2; done
say "diffusion stage over: $(tr '\r' '\n' < "$O/headline.log" | grep -a 'training steps/s\|copy test' | head -2)"

frontier() {   # frontier NAME FLAGS...: one setting on the GPU, budgets in wall-clock minutes
    local name=$1; shift
    [ "$(left)" -gt 30 ] || { say "no time left for $name"; return; }
    say "frontier $name"
    EAQ_TORCH_THREADS=1 timeout "$(left)" python3 experiments/frontier.py --dataset "$D" --out "$W/frontier" \
        --records "$W/records-frontier-gpu" --device "$DEV" --clock wall --chunk 300 --budgets $BUDGETS \
        --episodes "$EPISODES" "$@" $FRONTIER_FLAGS >> "$O/frontier.log" 2>&1
    say "frontier $name: exit $?"
}
frontier agents96 --network agents --dim 96 --dim-mults 1 1 1
frontier agents128 --network agents --dim 128
frontier flat80 --network flat --dim 80
if [ "$(left)" -gt 45 ]; then
    say "profile of the default's training step"
    timeout "$(left)" python3 experiments/diffusion_speed.py --dataset "$D" --device "$DEV" --train-steps 50 \
        --profile 20 > "$O/profile.log" 2>&1
fi
wait $HEADLINE
say "headline: exit $? (124: stopped at the deadline)"
tr '\r' '\n' < "$O/headline.log" | grep -a -v '%|' | grep -v '^\s*$' | tail -12 >> "$O/main.log"
(cd "$W" && tar czf "$O/records.tar.gz" --ignore-failed-read results/*/results.json results/*/metrics.csv \
    results/*/curve.png eaq/*/report.json records-frontier-gpu 2>/dev/null)
say "packed $(tar tzf "$O/records.tar.gz" | wc -l) files"
