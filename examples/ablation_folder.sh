#!/usr/bin/env bash
# An ablation on your image folder with your own model (docs/examples/ablation_folder.md):
# normalization (batch norm as written / group norm / none) x stochastic depth (off / on), over seeds.
#
#   bash examples/ablation_folder.sh PHOTOS [OUT]
#
# PHOTOS holds train/<class>/*.png|jpg (optionally test/<class>/...). Environment: EPOCHS (default 10), SEEDS (3),
# JOBS (1), IMAGE_SIZE (32), MODEL (user_resnet:resnet, from this directory), TRAINTRICKS (the command, default
# `traintricks`; e.g. "python -m traintricks").
set -euo pipefail
photos=${1:?usage: bash examples/ablation_folder.sh PHOTOS [OUT]}
out=${2:-runs/ablation-folder}
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"        # user_resnet.py, beside this script
tt=${TRAINTRICKS:-traintricks}

$tt compare \
  --set data.name=folder --set "data.root=$photos" --set "data.image_size=${IMAGE_SIZE:-32}" \
  --set "model.name=${MODEL:-user_resnet:resnet}" --set "epochs=${EPOCHS:-10}" \
  --set 'data.augment=["flip", {name = "crop", padding = 4}]' --set data.augment_from_epoch=0 \
  --vary model.norm=batchnorm,groupnorm,none \
  --vary 'model.regularization=[],[{name = "stochastic_depth", survival = 0.8}]' \
  --seeds "${SEEDS:-3}" --jobs "${JOBS:-1}" --out "$out"
echo "report: $out/report.html" >&2
