#!/usr/bin/env bash
# The variants table of experiments/README.md: z50 on dynamically binarized MNIST, 100 epochs
# each, then -log p(x) with K=1000 importance samples on all 10,000 test images.
#   bash experiments/variants.sh OUT_DIR [NAME ...]
# NAME: baseline iwae5 vamp iaf hidden2 best (default: all, one after another). Each run is
# single-threaded (OMP_NUM_THREADS=1): two lanes on two cores, e.g.
#   bash experiments/variants.sh outputs/variants iwae5 hidden2 baseline vamp &
#   bash experiments/variants.sh outputs/variants best iaf &
# trainer.resume=true: an interrupted lane continues where it stopped when started again.
set -euo pipefail
out=${1:-outputs/variants}
shift || true
export OMP_NUM_THREADS=1
declare -A RUNS=(
  [baseline]=""
  [iwae5]="elbo=iwae elbo.num_particles=5"
  [vamp]="model/prior=vamp"
  [iaf]="model/posterior=iaf"
  [hidden2]="model.hidden_layers=2"
  [best]="elbo=iwae elbo.num_particles=5 model/prior=vamp model/posterior=iaf model.hidden_layers=2"
)
names=${*:-baseline iwae5 vamp iaf hidden2 best}
for name in $names; do
  # shellcheck disable=SC2086
  /usr/bin/time -f "$name train wall %e s" python -m vae_pyro.train +experiment=z50_binarized \
    ${RUNS[$name]} hydra.run.dir="$out/$name" trainer.resume=true
  if [ ! -e "$out/$name/eval_k1000.json" ]; then
    /usr/bin/time -f "$name evaluate wall %e s" python -m vae_pyro.evaluate \
      run_dir="$out/$name" num_particles=1000 output=eval_k1000.json
  fi
done
